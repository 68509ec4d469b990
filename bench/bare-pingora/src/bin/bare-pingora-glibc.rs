//! Bare Pingora with the system allocator (glibc malloc), to measure what mimalloc changes.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    bare_pingora::run(bare_pingora::Settings::parse(&args));
}
