//! `warden`: the command line. Each subcommand lives in its own file under `cmd/`.

mod cmd;

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = cmd::Cli::parse();
    match cmd::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(cmd::EXIT_INPUT)
        }
    }
}
