#![deny(clippy::unwrap_used)]

use std::process::ExitCode;

use ringkv::cli::{
    error_line, parse, run_bench, run_client, run_serve, Command, ExitStatus, ParseError,
};

fn main() -> ExitCode {
    // A usage error exits 2 here (clap's own code, `ExitStatus::Usage`), and so does a
    // `serve --config` file that names no flag or gives one a bad value.
    let parsed = match parse(std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(ParseError::Clap(e)) => e.exit(),
        Err(ParseError::File(e)) => {
            eprintln!("error: {}", error_line(&e));
            return ExitCode::from(ExitStatus::Usage as u8);
        }
    };
    let cli = parsed.cli;
    // `serve --check-config`: the settings, checked as a start would check them, and exit.
    if let (Command::Serve(args), Some(effective)) = (&cli.command, &parsed.effective) {
        return match args.to_config() {
            Ok(_) => {
                print!("{effective}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {}", error_line(&e));
                ExitCode::from(ExitStatus::Error as u8)
            }
        };
    }
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
