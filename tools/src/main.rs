//! `ringkv-tools`: test and ops tooling that drives a ringkv cluster from outside, over
//! its HTTP API. It is not part of the node: `scripts/scale-out.sh` and
//! `scripts/docker-faults.sh` run it on the host against local or containerised nodes, and
//! `scripts/bench-compare.sh` loads etcd and Redis with it.
//!
//! - [`scale`]: `load`, `churn` and `verify`, the scale-out and fault checks.
//! - [`bench`]: `bench --target etcd|redis`, `ringkv bench`'s load generator on other stores.
//! - [`bench_report`]: `bench-report`, the comparison table of `scripts/bench-compare.sh`.
//! - [`bench_scaling`]: `bench-scaling`, the tables and plot of `bench-compare.sh --scaling`.
//! - [`chaos`]: `chaos`, real node processes under seeded faults (`scripts/chaos.sh`).

mod bench;
mod bench_report;
mod bench_scaling;
mod chaos;
mod scale;

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "ringkv-tools",
    version,
    about = "Load, churn and verify checks for ringkv clusters, and benchmarks of other stores"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Scale(scale::ScaleCommand),
    /// Load etcd or Redis as `ringkv bench` loads ringkv, with the same flags and report.
    Bench(Box<bench::BenchArgs>),
    /// Fold `bench --json` outputs into the comparison table (`scripts/bench-compare.sh`).
    BenchReport(bench_report::BenchReportArgs),
    /// Fold the runs of `scripts/bench-compare.sh --scaling` into tables and a plot.
    BenchScaling(bench_scaling::BenchScalingArgs),
    /// Run local nodes under seeded faults and load, then check nothing acknowledged was
    /// lost (`scripts/chaos.sh`).
    Chaos(Box<chaos::ChaosArgs>),
}

async fn run(command: Command) -> Result<bool, String> {
    match command {
        Command::Scale(c) => scale::run_scale(c).await,
        Command::Bench(args) => bench::run(*args).await.map(|()| true),
        Command::BenchReport(args) => bench_report::run(args).map(|()| true),
        Command::BenchScaling(args) => bench_scaling::run(args).map(|()| true),
        // Interrupted, the run's future is dropped, and with it the nodes it started.
        Command::Chaos(args) => tokio::select! {
            r = chaos::run(*args) => r,
            why = interrupted() => Err(why),
        },
    }
}

/// SIGINT or SIGTERM.
async fn interrupted() -> String {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted (SIGINT)".into(),
        _ = term.recv() => "terminated (SIGTERM)".into(),
    }
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
    let result = runtime.block_on(run(cli.command));
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
