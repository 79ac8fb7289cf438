fn main() -> std::process::ExitCode {
    piculet::cli::main()
}
