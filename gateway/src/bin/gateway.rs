// mimalloc: a proxy allocates and frees many small buffers per request; glibc malloc took
// ~12% of the pass-through profile (bench/results), mimalloc much less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(gateway::cli::main());
}
