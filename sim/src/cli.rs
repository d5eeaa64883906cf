//! `ringkv-sim run` and `ringkv-sim sweep`.

use std::process::ExitCode;
use std::time::Duration;

use crate::sabotage::Sabotage;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Scenario, SimConfig, Storage};
use crate::run::run_on_fresh_thread;
use crate::sweep::{explain, failure_line, sweep};

#[derive(Parser, Debug)]
#[command(
    name = "ringkv-sim",
    about = "Deterministic simulation of ringkv clusters"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print draws from the seeded entropy sources (two processes must agree).
    #[command(hide = true)]
    EntropyCheck {
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Run one seed and check it.
    Run {
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// none, partition, isolate, bridge, clog, crash, loss, churn or all.
        #[arg(long, default_value = "all")]
        scenario: Scenario,
        /// Print the hash of every delivery and response (equal for equal seeds).
        #[arg(long)]
        trace_hash: bool,
        /// Run the seed this many times, each on a fresh thread, and fail unless every
        /// run's trace hash is the same.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Print the whole history, not only the offending keys'.
        #[arg(long)]
        history: bool,
        #[command(flatten)]
        knobs: Knobs,
    },
    /// Run a range of seeds and print each failure with its replay command.
    Sweep {
        /// `A..B` (B excluded).
        #[arg(long, value_parser = parse_range)]
        seeds: std::ops::Range<u64>,
        /// A scenario, or `all` to give the seeds every scenario in turn.
        #[arg(long, default_value = "all")]
        scenario: String,
        /// Seeds run at once, each on its own thread.
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// Print the story of every failure, not only its line.
        #[arg(long)]
        explain: bool,
        #[command(flatten)]
        knobs: Knobs,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum StorageArg {
    Disk,
    Memory,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SabotageArg {
    None,
    AckWithoutStore,
    SkipFsync,
}

#[derive(Args, Debug)]
pub struct Knobs {
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// How long the load and faults last (simulated time).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value_t = 4)]
    clients: usize,
    #[arg(long, default_value_t = 6)]
    keys: usize,
    #[arg(long, default_value_t = 3)]
    n: usize,
    #[arg(long, default_value_t = 2)]
    r: usize,
    #[arg(long, default_value_t = 2)]
    w: usize,
    #[arg(long, value_enum, default_value = "disk")]
    storage: StorageArg,
    /// Break the node on purpose, to prove the checker catches it.
    #[arg(long, value_enum, default_value = "none")]
    sabotage: SabotageArg,
    /// Simulated time per step.
    #[arg(long, default_value = "2ms", value_parser = humantime::parse_duration)]
    tick: Duration,
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    min_latency: Duration,
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    max_latency: Duration,
    /// Per-step chance a link drops what is in flight (`loss`).
    #[arg(long, default_value_t = 0.01)]
    loss_rate: f64,
    /// Mean pause between faults.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    fault_interval: Duration,
    /// Mean length of a fault.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    fault_length: Duration,
    /// Time to converge after the final heal.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    settle: Duration,
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    gossip_interval: Duration,
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    anti_entropy_interval: Duration,
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    handoff_interval: Duration,
    #[arg(long, default_value = "800ms", value_parser = humantime::parse_duration)]
    rpc_timeout: Duration,
    /// Node logs at this level on stderr (`RUST_LOG` syntax), for a replay.
    #[arg(long)]
    log: Option<String>,
}

impl Knobs {
    fn config(&self, seed: u64, scenario: Scenario) -> SimConfig {
        SimConfig {
            seed,
            scenario,
            nodes: self.nodes,
            duration: self.duration,
            clients: self.clients,
            keys: self.keys,
            n: self.n,
            r: self.r,
            w: self.w,
            storage: match self.storage {
                StorageArg::Disk => Storage::Disk,
                StorageArg::Memory => Storage::Memory,
            },
            sabotage: match self.sabotage {
                SabotageArg::None => Sabotage::None,
                SabotageArg::AckWithoutStore => Sabotage::AckWithoutStore,
                SabotageArg::SkipFsync => Sabotage::SkipFsync,
            },
            tick: self.tick,
            min_latency: self.min_latency,
            max_latency: self.max_latency,
            loss_rate: self.loss_rate,
            fault_interval: self.fault_interval,
            fault_length: self.fault_length,
            settle: self.settle,
            gossip_interval: self.gossip_interval,
            anti_entropy_interval: self.anti_entropy_interval,
            handoff_interval: self.handoff_interval,
            rpc_timeout: self.rpc_timeout,
            ..SimConfig::default()
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.nodes == 0 || self.clients == 0 || self.keys == 0 {
            return Err("--nodes, --clients and --keys must be at least 1".into());
        }
        if self.n == 0 || self.r == 0 || self.w == 0 || self.r > self.n || self.w > self.n {
            return Err("need 1 <= R, W <= N".into());
        }
        if !(0.0..1.0).contains(&self.loss_rate) {
            return Err("--loss-rate is a probability below 1".into());
        }
        if self.tick.is_zero() || self.max_latency < self.min_latency {
            return Err("--tick must be positive and --max-latency >= --min-latency".into());
        }
        Ok(())
    }

    fn init_logs(&self) {
        if let Some(filter) = &self.log {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::stderr)
                .try_init();
        }
    }
}

fn parse_range(s: &str) -> Result<std::ops::Range<u64>, String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("{s:?} is not A..B"))?;
    let a: u64 = a.parse().map_err(|_| format!("{a:?} is not a number"))?;
    let b: u64 = b.parse().map_err(|_| format!("{b:?} is not a number"))?;
    if b <= a {
        return Err(format!("{s:?} is empty"));
    }
    Ok(a..b)
}

pub fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::EntropyCheck { seed } => {
            println!("{}", crate::entropy::sample(seed));
            ExitCode::SUCCESS
        }
        Command::Run {
            seed,
            scenario,
            trace_hash,
            repeat,
            history,
            knobs,
        } => {
            if let Err(e) = knobs.validate() {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            knobs.init_logs();
            let config = knobs.config(seed, scenario);
            let mut hashes = Vec::new();
            let mut ok = true;
            for _ in 0..repeat.max(1) {
                let report = run_on_fresh_thread(&config);
                if history {
                    for e in &report.history {
                        println!("{e}");
                    }
                }
                println!(
                    "seed {} scenario {}: {} ({} ops, {} acknowledged writes, {} nemesis actions, {:.1}s simulated in {:.1}s)",
                    seed,
                    scenario,
                    if report.passed() { "PASS" } else { "FAIL" },
                    report.history.len(),
                    report.acked_writes(),
                    report.faults,
                    report.simulated.as_secs_f64(),
                    report.wall.as_secs_f64(),
                );
                if !report.passed() {
                    print!("{}", explain(&report));
                    ok = false;
                }
                if trace_hash {
                    println!("trace-hash {:016x}", report.trace_hash);
                }
                hashes.push(report.trace_hash);
            }
            if hashes.windows(2).any(|w| w[0] != w[1]) {
                println!("NONDETERMINISTIC: the same seed gave different trace hashes");
                ok = false;
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Sweep {
            seeds,
            scenario,
            jobs,
            explain: verbose,
            knobs,
        } => {
            if let Err(e) = knobs.validate() {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            let scenario = match scenario.as_str() {
                "all" => None,
                s => match s.parse::<Scenario>() {
                    Ok(s) => Some(s),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                },
            };
            knobs.init_logs();
            let base = knobs.config(0, Scenario::All);
            let result = sweep(&base, seeds.clone(), scenario, jobs, |report| {
                if !report.passed() {
                    println!("{}", failure_line(report));
                    if verbose {
                        print!("{}", explain(report));
                    }
                }
            });
            println!(
                "sweep {}..{}: {} runs, {} failed, {:.1}s wall, {:.2} seeds/s, {:.0}s simulated",
                seeds.start,
                seeds.end,
                result.runs,
                result.failures.len(),
                result.wall.as_secs_f64(),
                result.seeds_per_second(),
                result.simulated.as_secs_f64(),
            );
            if result.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
