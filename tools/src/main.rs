//! `ringkv-tools`: test and ops tooling that drives a ringkv cluster from outside, over
//! its HTTP API. It is not part of the node: `scripts/scale-out.sh` and
//! `scripts/docker-faults.sh` run it on the host against local or containerised nodes.

mod scale;

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "ringkv-tools",
    version,
    about = "Load, churn and verify checks for ringkv clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: scale::ScaleCommand,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(scale::run_scale(cli.command));
    // What may remain are the HTTP client's idle connections; they hold nothing that
    // needs flushing, so they do not get to delay the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("error: the check failed");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
