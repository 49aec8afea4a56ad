// mimalloc: tokio allocates every task and socket registration
// cache-line aligned, and glibc pads each aligned allocation; with it an
// idle client connection cost about 1.1 KiB, with mimalloc 0.6–0.85 KiB
// (docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    shoal_node::cli::main()
}
