//! `ringkv serve`: flags (each also a `RINGKV_*` variable), signals, and the ready line.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{BlockingMode, FsyncMode, Limits, NodeConfig, StorageKind};
use crate::net::TokioNetwork;
use crate::node::{self, NodeError};
use crate::quorum::Replication;
use crate::telemetry::{self, LogFormat};

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Where the node keeps its data and its node id.
    #[arg(long, env = "RINGKV_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// HTTP API address.
    #[arg(long, env = "RINGKV_HTTP_ADDR", default_value = "127.0.0.1:7070")]
    pub http_addr: SocketAddr,
    #[arg(long, env = "RINGKV_STORAGE", value_enum, default_value = "redb")]
    pub storage: StorageKind,
    /// `always`: acknowledge only durable writes. `periodic`: sync on a timer.
    #[arg(long, env = "RINGKV_FSYNC", value_enum, default_value = "always")]
    pub fsync: FsyncMode,
    /// How often `--fsync periodic` syncs.
    #[arg(long, env = "RINGKV_FSYNC_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub fsync_interval: Duration,
    /// Replicas per key.
    #[arg(long, env = "RINGKV_N", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub n: u16,
    /// Replies a read waits for by default.
    #[arg(long, env = "RINGKV_R", default_value_t = 2)]
    pub r: u16,
    /// Replies a write waits for by default.
    #[arg(long, env = "RINGKV_W", default_value_t = 2)]
    pub w: u16,
    /// Time a request may take when it gives no `timeout_ms`.
    #[arg(long, env = "RINGKV_REQUEST_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    #[arg(long, env = "RINGKV_MAX_VALUE_BYTES", default_value_t = 1024 * 1024)]
    pub max_value_bytes: usize,
    /// Versions one key may hold before writes get 409.
    #[arg(long, env = "RINGKV_MAX_SIBLINGS", default_value_t = 64)]
    pub max_siblings: usize,
    #[arg(long, env = "RINGKV_MAX_BATCH_OPS", default_value_t = 1000)]
    pub max_batch_ops: usize,
    #[arg(long, env = "RINGKV_MAX_BATCH_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_batch_bytes: usize,
    /// Open HTTP connections at most; more wait to be accepted.
    #[arg(long, env = "RINGKV_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    #[arg(long, env = "RINGKV_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log level or filter (`RUST_LOG` wins when set).
    #[arg(long, env = "RINGKV_LOG", default_value = "info")]
    pub log: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Node(#[from] NodeError),
}

impl ServeArgs {
    pub fn to_config(&self) -> Result<NodeConfig, ServeError> {
        let (n, r, w) = (self.n as usize, self.r as usize, self.w as usize);
        if !(1..=n).contains(&r) || !(1..=n).contains(&w) {
            return Err(ServeError::Config(format!(
                "--r and --w must be in 1..=--n ({n}); got r={r} w={w}"
            )));
        }
        if self.max_value_bytes == 0 || self.max_siblings == 0 || self.max_batch_ops == 0 {
            return Err(ServeError::Config(
                "--max-value-bytes, --max-siblings and --max-batch-ops must be at least 1".into(),
            ));
        }
        Ok(NodeConfig {
            data_dir: self.data_dir.clone(),
            storage: self.storage,
            fsync: self.fsync,
            fsync_interval: self.fsync_interval,
            replication: Replication { n, r, w },
            request_timeout: self.request_timeout,
            limits: Limits {
                max_value_bytes: self.max_value_bytes,
                max_siblings: self.max_siblings,
                max_batch_ops: self.max_batch_ops,
                max_batch_bytes: self.max_batch_bytes,
                max_connections: self.max_connections,
                ..Limits::default()
            },
            blocking: BlockingMode::Threaded,
        })
    }
}

/// Runs a node until SIGINT or SIGTERM.
pub async fn run_serve(args: ServeArgs) -> Result<(), ServeError> {
    telemetry::init(args.log_format, &args.log);
    let config = args.to_config()?;
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    node::run(config, args.http_addr, TokioNetwork, shutdown, |started| {
        // One line on stdout, for scripts that start the node on port 0.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "ringkv ready http={} node_id={:016x}",
            started.http_addr, started.node_id
        );
        let _ = out.flush();
    })
    .await?;
    Ok(())
}

async fn signal_shutdown(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
    shutdown.cancel();
}
