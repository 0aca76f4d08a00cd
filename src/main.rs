#[cfg(feature = "count-allocations")]
#[global_allocator]
static ALLOCATOR: busbench::metrics::alloc::CountingAllocator =
    busbench::metrics::alloc::CountingAllocator;

fn main() {
    std::process::exit(busbench::cli::main());
}
