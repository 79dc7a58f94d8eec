use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = atr_dist::cli::Cli::parse();
    match atr_dist::cli::run(cli).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("atr-dist: {err}");
            err.exit_code()
        }
    }
}
