//! `ringkv bench` (the load generator) and the hidden `bench-report` of
//! `scripts/bench-compare.sh`.

use std::path::PathBuf;
use std::time::Duration;

use crate::bench::compare::{render, Runs};
use crate::bench::target::TargetKind;
use crate::bench::usage::CpuSource;
use crate::bench::workload::{KeyDist, Workload};
use crate::bench::{self, BenchConfig};
use crate::client::ClientOptions;

/// Longest run `--duration` accepts: a benchmark is always bounded.
const MAX_DURATION: Duration = Duration::from_secs(3600);
const MAX_CONCURRENCY: usize = 4096;
const MAX_KEYS: u64 = 100_000_000;
const MAX_VALUE_BYTES: usize = 64 * 1024 * 1024;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// What to load.
    #[arg(long, value_enum, default_value = "ringkv")]
    pub target: TargetKind,
    /// Where: node URLs (`http://…`, `redis://…`), comma-separated; requests go
    /// round-robin. Default: ringkv's and the reference's 127.0.0.1:7070, etcd's :2379,
    /// Redis's :6379.
    #[arg(long, value_delimiter = ',')]
    pub url: Vec<String>,
    /// Requests in flight at once (one per worker).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// How long the measured phase runs (`10s`, `1m`), at most 1 h.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Stop after this many operations, if that comes before `--duration`.
    #[arg(long)]
    pub ops: Option<u64>,
    /// Share of reads, 0 to 1.
    #[arg(long, default_value_t = 0.5)]
    pub read_ratio: f64,
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Distinct keys the workload touches.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    #[arg(long, value_enum, default_value = "uniform")]
    pub key_dist: KeyDist,
    /// Read quorum sent with each ringkv read (`2`, `one`, `quorum`, `all`).
    #[arg(long)]
    pub r: Option<String>,
    /// Write quorum sent with each ringkv write.
    #[arg(long)]
    pub w: Option<String>,
    /// Write every key once before measuring, so that reads find values.
    #[arg(long)]
    pub preload: bool,
    /// Server processes whose CPU time is measured (comma-separated PIDs).
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// A cgroup v2 directory whose `cpu.stat` is measured instead of, or with, `--pids`.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// Nodes whose `/metrics` give internode bytes and fsyncs; default: the ringkv URLs.
    #[arg(long, value_delimiter = ',')]
    pub metrics_url: Vec<String>,
    /// The per-request timeout.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub timeout: Duration,
    /// Seed of the operation and key sequence.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// A name for this run, kept in the report.
    #[arg(long)]
    pub label: Option<String>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchReportArgs {
    /// The directory of `ringkv bench --json` outputs.
    pub dir: PathBuf,
    /// A line saying how the runs were made, put above the table.
    #[arg(long, default_value = "")]
    pub settings: String,
}

impl BenchArgs {
    fn config(self) -> Result<BenchConfig, String> {
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            return Err(format!("--concurrency must be 1..={MAX_CONCURRENCY}"));
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            return Err("--duration must be more than 0 and at most 1h".into());
        }
        if self.ops == Some(0) {
            return Err("--ops must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return Err("--read-ratio must be between 0 and 1".into());
        }
        if self.keys == 0 || self.keys > MAX_KEYS {
            return Err(format!("--keys must be 1..={MAX_KEYS}"));
        }
        if self.value_size > MAX_VALUE_BYTES {
            return Err(format!("--value-size must be at most {MAX_VALUE_BYTES}"));
        }
        if self.preload && self.keys > 10_000_000 {
            return Err("--preload writes every key: use at most 10000000 keys".into());
        }
        if self.timeout.is_zero() {
            return Err("--timeout must be more than 0".into());
        }
        if (self.r.is_some() || self.w.is_some()) && self.target != TargetKind::Ringkv {
            return Err("--r and --w apply to --target ringkv only".into());
        }
        let urls = if self.url.is_empty() {
            vec![match self.target {
                TargetKind::Ringkv | TargetKind::Reference => "http://127.0.0.1:7070",
                TargetKind::Etcd => "http://127.0.0.1:2379",
                TargetKind::Redis => "redis://127.0.0.1:6379",
            }
            .to_owned()]
        } else {
            self.url
        };
        let metrics_urls = match (self.metrics_url.is_empty(), self.target) {
            (false, _) => self.metrics_url,
            (true, TargetKind::Ringkv) => urls.clone(),
            (true, _) => Vec::new(),
        };
        let label = self
            .label
            .unwrap_or_else(|| format!("{:?}", self.target).to_lowercase());
        Ok(BenchConfig {
            target: self.target,
            urls,
            label,
            concurrency: self.concurrency,
            duration: self.duration,
            max_ops: self.ops,
            workload: Workload::new(self.read_ratio, self.keys, self.key_dist, self.value_size),
            preload: self.preload,
            client: ClientOptions {
                timeout: self.timeout,
                max_idle_connections: self.concurrency,
                r: self.r,
                w: self.w,
                ..ClientOptions::default()
            },
            cpu: CpuSource {
                pids: self.pids,
                cgroup: self.cgroup,
            },
            metrics_urls,
            seed: self.seed,
            progress: !self.json && bench::stderr_is_terminal(),
        })
    }
}

/// Runs `ringkv bench`: the report goes to stdout, as a table or JSON.
pub async fn run_bench(args: BenchArgs) -> Result<(), String> {
    let json = args.json;
    let config = args.config()?;
    let report = bench::run(config).await.map_err(|e| e.to_string())?;
    if json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        println!("{text}");
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// Runs `ringkv bench-report DIR`: the comparison table goes to stdout.
pub fn run_bench_report(args: BenchReportArgs) -> Result<(), String> {
    let runs = Runs::load(&args.dir)?;
    print!("{}", render(&runs, &args.settings));
    Ok(())
}
