#![deny(clippy::unwrap_used)]

use std::process::ExitCode;

use clap::Parser;
use ringkv::cli::{error_line, run_bench, run_client, run_serve, Cli, Command, ExitStatus};

fn main() -> ExitCode {
    // A usage error exits 2 here (clap's own code, `ExitStatus::Usage`).
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => run_serve(*args)
                .await
                .map_err(|e| (error_line(&e), ExitStatus::Error)),
            Command::Bench(args) => run_bench(*args).await.map_err(|e| (e, ExitStatus::Error)),
            other => run_client(other)
                .await
                .map_err(|e| (error_line(&e), e.exit_status())),
        }
    });
    // Everything the node owns has stopped by now; what may remain are detached tasks
    // parked on sockets (a peer's idle connection, a read repair waiting out its deadline).
    // They hold nothing that needs flushing, so they do not get to delay the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((line, status)) => {
            eprintln!("error: {line}");
            ExitCode::from(status as u8)
        }
    }
}
