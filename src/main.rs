//! The `upshift` binary: thin glue over the library. Errors are printed
//! here, once, and mapped to their exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = upshift::cli::Cli::parse();
    if !matches!(
        cli.command,
        upshift::cli::Command::Guard { .. } | upshift::cli::Command::Remote { .. }
    ) {
        upshift::logging::init(cli.verbose);
    }
    match upshift::cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("upshift: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
