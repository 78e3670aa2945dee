//! The `upshift` binary: thin glue over the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = upshift::cli::Cli::parse();
    if !matches!(cli.command, upshift::cli::Command::Guard { .. }) {
        upshift::logging::init(cli.verbose);
    }
    match upshift::cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("upshift: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}
