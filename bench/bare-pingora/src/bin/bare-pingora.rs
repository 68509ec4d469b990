//! Bare Pingora with mimalloc as the global allocator, as the gateway binary has.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    bare_pingora::run(bare_pingora::Settings::parse(&args));
}
