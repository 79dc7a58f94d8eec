use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = atr_dist::cli::Cli::parse();
    let result = atr_dist::cli::run(cli).await;
    // Exported spans (feature `otel`) are flushed before the process exits.
    atr_dist::telemetry::shutdown();
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("atr-dist: {err}");
            err.exit_code()
        }
    }
}
