fn main() {
    std::process::exit(busbench::cli::main());
}
