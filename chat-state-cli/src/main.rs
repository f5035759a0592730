//! The `chat-state` command line: `simulate`, `bench`, `conformance`, `inspect`,
//! `force-release`. Run `chat-state --help`.

fn main() -> std::process::ExitCode {
    chat_state_cli::main()
}
