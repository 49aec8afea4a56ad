fn main() -> std::process::ExitCode {
    shoal_node::cli::main()
}
