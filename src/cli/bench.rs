//! `ringkv bench`, the load generator: its flags, checked, and the run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::bench::target::{HttpTarget, Target, TargetKind};
use crate::bench::usage::CpuSource;
use crate::bench::workload::{KeyDist, Workload};
use crate::bench::{self, BenchConfig};
use crate::client::{AuthToken, ClientOptions};

/// Longest run `--duration` accepts: a benchmark is always bounded.
const MAX_DURATION: Duration = Duration::from_secs(3600);
const MAX_CONCURRENCY: usize = 4096;
const MAX_KEYS: u64 = 100_000_000;
const MAX_VALUE_BYTES: usize = 64 * 1024 * 1024;

/// `ringkv bench`: the targets the product knows, and the flags every target shares.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// What to load. etcd and Redis: `ringkv-tools bench`.
    #[arg(long, value_enum, default_value = "ringkv")]
    pub target: TargetKind,
    #[command(flatten)]
    pub options: BenchOptions,
}

/// The flags of a benchmark run, whatever the target: `ringkv-tools bench` shares them.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchOptions {
    /// Where: node URLs, comma-separated; requests go round-robin. Default: the target's
    /// usual local address (ringkv's and the reference's `http://127.0.0.1:7070`).
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
    /// Bytes per value written (`100`, `4KiB`, `1MiB`).
    #[arg(long, default_value = "100", value_parser = super::size::any_usize())]
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
    /// Bearer token for nodes started with --auth-token-file (`/metrics` needs it too).
    #[arg(long = "auth-token", env = "RINGKV_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// PEM CA certificate(s) to verify `https://` nodes against.
    #[arg(long, env = "RINGKV_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

impl BenchOptions {
    /// Checks every bound; `ringkv` says whether the target takes `--r`/`--w`.
    pub fn check(&self, ringkv: bool) -> Result<(), String> {
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
        if (self.r.is_some() || self.w.is_some()) && !ringkv {
            return Err("--r and --w apply to --target ringkv only".into());
        }
        Ok(())
    }

    /// The `--url`s, or `default` when none was given.
    pub fn urls_or(&self, default: &str) -> Vec<String> {
        if self.url.is_empty() {
            vec![default.to_owned()]
        } else {
            self.url.clone()
        }
    }

    /// The HTTP client settings: one idle connection kept per worker.
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions {
            timeout: self.timeout,
            max_idle_connections: self.concurrency,
            r: self.r.clone(),
            w: self.w.clone(),
            auth_token: self.auth_token.clone().map(AuthToken),
            ca_cert: self.ca_cert.clone(),
            ..ClientOptions::default()
        }
    }

    /// The run's settings, on a target built from these flags. `/metrics` are read from
    /// `--metrics-url`, or else from `default_metrics` (a ringkv target's own URLs).
    pub fn into_config(self, target: Arc<dyn Target>, default_metrics: Vec<String>) -> BenchConfig {
        let client = self.client_options();
        let metrics_urls = if self.metrics_url.is_empty() {
            default_metrics
        } else {
            self.metrics_url
        };
        let label = self.label.unwrap_or_else(|| target.name().to_owned());
        BenchConfig {
            target,
            label,
            concurrency: self.concurrency,
            duration: self.duration,
            max_ops: self.ops,
            workload: Workload::new(self.read_ratio, self.keys, self.key_dist, self.value_size),
            preload: self.preload,
            client,
            cpu: CpuSource {
                pids: self.pids,
                cgroup: self.cgroup,
            },
            metrics_urls,
            seed: self.seed,
            // `--json` is for machines: stdout is the report, stderr stays quiet.
            progress: if self.json {
                bench::Progress::Off
            } else {
                bench::Progress::for_stderr()
            },
        }
    }
}

/// Runs a benchmark and prints its report on stdout, as a table or JSON.
pub async fn run_and_print(config: BenchConfig, json: bool) -> Result<(), String> {
    let report = bench::run(config).await.map_err(|e| e.to_string())?;
    if json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        println!("{text}");
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// Runs `ringkv bench` against ringkv nodes or the reference server.
pub async fn run_bench(args: BenchArgs) -> Result<(), String> {
    let BenchArgs { target, options } = args;
    options.check(target == TargetKind::Ringkv)?;
    let urls = options.urls_or("http://127.0.0.1:7070");
    let http = HttpTarget::new(target, urls.clone(), &options.client_options())
        .map_err(|e| format!("cannot reach the target: {e}"))?;
    let metrics = if target == TargetKind::Ringkv {
        urls
    } else {
        Vec::new()
    };
    let json = options.json;
    run_and_print(options.into_config(Arc::new(http), metrics), json).await
}
