//! `ringkv bench`: a closed-loop load generator. `concurrency` workers each keep one
//! request in flight against a [`target::Target`], for a bounded time or number of
//! operations, and record every latency in an HdrHistogram.
//!
//! Closed loop means a slow answer delays the worker's next request, so latencies under
//! overload are understated (coordinated omission): compare systems at equal concurrency,
//! as `scripts/bench-compare.sh` does, and read the ops/s first.

pub mod report;
pub mod target;
pub mod usage;
pub mod workload;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::client::ClientOptions;
use report::{Efficiency, OpStats, Report, Settings, Tally};
use target::Target;
use usage::CpuSource;
use workload::{key_name, Op, Workload};

/// Everything a run needs; the CLI builds it from the flags.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// What is loaded, and where.
    pub target: Arc<dyn Target>,
    pub label: String,
    pub concurrency: usize,
    pub duration: Duration,
    pub max_ops: Option<u64>,
    pub workload: Workload,
    pub preload: bool,
    pub client: ClientOptions,
    pub cpu: CpuSource,
    /// Nodes whose `/metrics` give internode bytes and fsyncs (ringkv targets).
    pub metrics_urls: Vec<String>,
    pub seed: u64,
    pub progress: Progress,
}

/// How a run shows it is alive, on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    Off,
    /// A bar, redrawn in place: for a terminal.
    Bar,
    /// One plain line per interval (a twentieth of the run, at least a second): for a
    /// log or a CI job, where a redrawn bar is a mess of `\r`.
    Lines,
}

impl Progress {
    /// A bar on a terminal, lines otherwise.
    pub fn for_stderr() -> Progress {
        if stderr_is_terminal() {
            Progress::Bar
        } else {
            Progress::Lines
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot reach the target: {0}")]
    Connect(String),
    #[error("preload failed: {failed} of {keys} writes failed (first: {first})")]
    Preload {
        failed: u64,
        keys: u64,
        first: String,
    },
    #[error("reading server usage: {0}")]
    Usage(String),
}

/// Runs the benchmark and returns its report.
pub async fn run(config: BenchConfig) -> Result<Report, BenchError> {
    let target = config.target.clone();
    probe(target.as_ref()).await?;
    let preloaded = if config.preload {
        preload(&target, &config).await?
    } else {
        0
    };

    // The workers' own settings: a node with auth wants the token on `/metrics` too.
    let metrics_http = config
        .client
        .http_client()
        .map_err(|e| BenchError::Connect(e.to_string()))?;
    let cpu_before = sample_cpu(&config.cpu)?;
    let metrics_before = sample_metrics(&metrics_http, &config.metrics_urls).await?;
    let (tally, ops, elapsed) = measure(&target, &config).await?;
    let cpu_after = sample_cpu(&config.cpu)?;
    let metrics_after = sample_metrics(&metrics_http, &config.metrics_urls).await?;

    let ops_f = ops.max(1) as f64;
    let mut efficiency = Efficiency {
        cpu_us_per_op: cpu_before
            .zip(cpu_after)
            .map(|(b, a)| a.saturating_sub(b) as f64 / ops_f),
        ..Efficiency::default()
    };
    if let (Some(b), Some(a)) = (&metrics_before, &metrics_after) {
        let sent = usage::delta(b, a, "rpc_sent_bytes");
        let acked = usage::delta(b, a, "writes_acknowledged");
        let fsyncs = usage::delta(b, a, "storage_fsyncs");
        let per_write = |v: Option<f64>| match (v, acked) {
            (Some(v), Some(w)) if w > 0.0 => Some(v / w),
            _ => None,
        };
        efficiency.internode_bytes_per_op = sent.map(|s| s / ops_f);
        efficiency.internode_bytes_per_write = per_write(sent);
        efficiency.fsyncs_per_write = per_write(fsyncs);
        efficiency.writes_acknowledged = acked.map(|w| w as u64);
    }

    let w = &config.workload;
    Ok(Report {
        label: config.label.clone(),
        settings: Settings {
            target: target.name().to_owned(),
            urls: target.urls().to_vec(),
            concurrency: config.concurrency,
            read_ratio: w.read_ratio,
            value_size: w.value.len(),
            keys: w.keys,
            key_dist: format!("{:?}", w.key_dist).to_lowercase(),
            r: config.client.r.clone(),
            w: config.client.w.clone(),
            seed: config.seed,
        },
        elapsed_secs: elapsed.as_secs_f64(),
        ops,
        ops_per_sec: ops as f64 / elapsed.as_secs_f64().max(1e-9),
        get: OpStats::from_histogram(&tally.get, elapsed),
        put: OpStats::from_histogram(&tally.put, elapsed),
        misses: tally.misses,
        errors_total: tally.errors.values().sum(),
        errors: tally.errors,
        efficiency,
        preloaded,
    })
}

/// One read before anything else, so that a wrong URL fails the run at once instead of
/// producing a report made of connection errors. Any answer will do.
async fn probe(target: &dyn Target) -> Result<(), BenchError> {
    let mut conn = target
        .connect(0)
        .await
        .map_err(|e| BenchError::Connect(e.to_string()))?;
    match conn.get(&key_name(0)).await {
        // A refused token would only fill the report with 401s.
        Err(
            e @ target::OpError::Status {
                status: 401 | 403, ..
            },
        ) => Err(BenchError::Connect(format!(
            "{e}: the target refused the token (--auth-token, RINGKV_TOKEN)"
        ))),
        Ok(_) | Err(target::OpError::Status { .. }) => Ok(()),
        Err(e) => Err(BenchError::Connect(e.to_string())),
    }
}

fn sample_cpu(cpu: &CpuSource) -> Result<Option<u64>, BenchError> {
    if cpu.is_empty() {
        return Ok(None);
    }
    cpu.cpu_us().map(Some).map_err(BenchError::Usage)
}

async fn sample_metrics(
    http: &reqwest::Client,
    urls: &[String],
) -> Result<Option<usage::Counters>, BenchError> {
    if urls.is_empty() {
        return Ok(None);
    }
    usage::scrape(http, urls)
        .await
        .map(Some)
        .map_err(BenchError::Usage)
}

/// Writes every key once, `concurrency` at a time, so that reads find values.
async fn preload(target: &Arc<dyn Target>, config: &BenchConfig) -> Result<u64, BenchError> {
    let keys = config.workload.keys;
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..config.concurrency {
        let (target, next, value) = (target.clone(), next.clone(), config.workload.value.clone());
        workers.spawn(async move {
            let mut conn = match target.connect(worker).await {
                Ok(c) => c,
                Err(e) => return (1, Some(e.to_string())),
            };
            let (mut failed, mut first) = (0u64, None);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys {
                    return (failed, first);
                }
                if let Err(e) = conn.put(&key_name(i), &value).await {
                    failed += 1;
                    first.get_or_insert_with(|| e.to_string());
                }
            }
        });
    }
    let (mut failed, mut first) = (0, None);
    while let Some(done) = workers.join_next().await {
        let (f, e) = done.unwrap_or((1, Some("preload worker panicked".into())));
        failed += f;
        first = first.or(e);
    }
    if failed > 0 {
        return Err(BenchError::Preload {
            failed,
            keys,
            first: first.unwrap_or_default(),
        });
    }
    Ok(keys)
}

/// The measured phase. Returns the merged tally, the operations completed and how long
/// they took.
async fn measure(
    target: &Arc<dyn Target>,
    config: &BenchConfig,
) -> Result<(Tally, u64, Duration), BenchError> {
    // Tickets bound the run by operation count: a worker takes one before each request.
    let tickets = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let max_ops = config.max_ops.unwrap_or(u64::MAX);
    // Every worker connects first and the clock starts when all have: dialling is not
    // part of the measured phase.
    let ready = Arc::new(tokio::sync::Barrier::new(config.concurrency + 1));
    let duration = config.duration;

    let progress = (config.progress == Progress::Bar).then(|| progress_bar(config));
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..config.concurrency {
        let (target, tickets, done, stop, ready) = (
            target.clone(),
            tickets.clone(),
            done.clone(),
            stop.clone(),
            ready.clone(),
        );
        let mut picker = config.workload.picker(config.seed, worker);
        let value = config.workload.value.clone();
        workers.spawn(async move {
            let mut tally = Tally::new();
            let conn = target.connect(worker).await;
            ready.wait().await;
            let mut conn = conn.map_err(|e| e.to_string())?;
            let deadline = Instant::now() + duration;
            while !stop.load(Ordering::Relaxed)
                && Instant::now() < deadline
                && tickets.fetch_add(1, Ordering::Relaxed) < max_ops
            {
                let (op, index) = picker.pick();
                let key = key_name(index);
                let started = Instant::now();
                let result = match op {
                    Op::Get => conn.get(&key).await.map(|found| {
                        tally.misses += u64::from(!found);
                    }),
                    Op::Put => conn.put(&key, &value).await,
                };
                let latency = started.elapsed();
                match result {
                    Ok(()) => match op {
                        Op::Get => Tally::record(&mut tally.get, latency),
                        Op::Put => Tally::record(&mut tally.put, latency),
                    },
                    Err(e) => *tally.errors.entry(e.kind()).or_default() += 1,
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, String>(tally)
        });
    }
    ready.wait().await;
    let started = Instant::now();

    let ticker = match (&progress, config.progress) {
        (Some(bar), _) => {
            let (bar, done, stop) = (bar.clone(), done.clone(), stop.clone());
            Some(tokio::spawn(async move {
                let started = Instant::now();
                let mut every = tokio::time::interval(Duration::from_millis(250));
                while !stop.load(Ordering::Relaxed) {
                    every.tick().await;
                    let n = done.load(Ordering::Relaxed);
                    bar.set_position(started.elapsed().as_millis() as u64);
                    let rate = n as f64 / started.elapsed().as_secs_f64().max(1e-3);
                    bar.set_message(format!("{n} ops, {rate:.0} ops/s"));
                }
            }))
        }
        (None, Progress::Lines) => {
            let done = done.clone();
            let every = (duration / 20).max(Duration::from_secs(1));
            Some(tokio::spawn(async move {
                let started = Instant::now();
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                let mut before = 0;
                loop {
                    ticks.tick().await;
                    let n = done.load(Ordering::Relaxed);
                    let rate = (n - before.min(n)) as f64 / every.as_secs_f64();
                    before = n;
                    eprintln!(
                        "bench: {:.0}s of {}: {n} ops, {rate:.0} ops/s",
                        started.elapsed().as_secs_f64(),
                        humantime::format_duration(duration),
                    );
                }
            }))
        }
        (None, _) => None,
    };

    let mut tally = Tally::new();
    let mut failed = None;
    while let Some(t) = workers.join_next().await {
        match t {
            Ok(Ok(t)) => tally.merge(t),
            Ok(Err(e)) => failed = Some(e),
            Err(_) => *tally.errors.entry("worker_panicked".into()).or_default() += 1,
        }
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    if let Some(t) = ticker {
        // The lines ticker sleeps up to an interval between checks: it is not waited out.
        t.abort();
        let _ = t.await;
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    if let Some(e) = failed {
        return Err(BenchError::Connect(e));
    }
    let ops = tally.get.len() + tally.put.len() + tally.errors.values().sum::<u64>();
    Ok((tally, ops, elapsed))
}

fn progress_bar(config: &BenchConfig) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(config.duration.as_millis() as u64);
    let style = indicatif::ProgressStyle::with_template("{bar:30} {elapsed:>4} {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// Whether a progress bar belongs on stderr.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}
