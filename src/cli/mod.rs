//! The `ringkv` command line: `serve` runs a node; the other commands are clients.

mod bench;
mod commands;
mod serve;

use clap::{Parser, Subcommand};

pub use bench::{run_and_print, run_bench, BenchArgs, BenchOptions};
pub use commands::{error_line, run_client, CommandError, ExitStatus};
pub use serve::{run_serve, ServeArgs};

#[derive(Parser, Debug)]
#[command(
    name = "ringkv",
    version,
    about = "A leaderless, Dynamo-style key-value store"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where client commands send their requests.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArg {
    /// The node to talk to (`http://…`, or `https://…` for a node with --tls-cert; no
    /// scheme means `http://`). Several, comma-separated, are tried in turn: the next one
    /// when a node cannot be reached (and, for reads, when it times out or answers 503).
    #[arg(
        long,
        env = "RINGKV_NODE",
        default_value = "http://127.0.0.1:7070",
        value_delimiter = ','
    )]
    pub node: Vec<String>,
    /// Bearer token for a node started with --auth-token-file (an admin token for
    /// `leave` and `remove` when it has --admin-token-file). Prefer the variable: a flag
    /// shows in the process list.
    #[arg(long = "auth-token", env = "RINGKV_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// PEM CA certificate(s) to verify an `https://` node against, instead of the
    /// built-in public roots.
    #[arg(long, env = "RINGKV_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
}

impl NodeArg {
    /// The nodes as given, for messages.
    pub fn shown(&self) -> String {
        self.node.join(",")
    }

    /// The client options these flags ask for, on top of `base`.
    pub fn client_options(
        &self,
        base: crate::client::ClientOptions,
    ) -> crate::client::ClientOptions {
        crate::client::ClientOptions {
            auth_token: self.auth_token.clone().map(crate::client::AuthToken),
            ca_cert: self.ca_cert.clone(),
            ..base
        }
    }
}

/// What a KV command may ask of its one call.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct KvArgs {
    /// Replicas a read waits for: a number, `one`, `quorum` or `all` (the node's
    /// default when not given).
    #[arg(long)]
    pub r: Option<String>,
    /// Replicas a write waits for: a number, `one`, `quorum` or `all`.
    #[arg(long)]
    pub w: Option<String>,
    /// How long one request may take (`500ms`, `5s`); 30 s when not given.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<std::time::Duration>,
}

impl KvArgs {
    pub fn call_options(&self) -> crate::client::CallOptions {
        crate::client::CallOptions {
            r: self.r.clone(),
            w: self.w.clone(),
            timeout: self.timeout,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node.
    Serve(Box<ServeArgs>),
    /// Write a value. VALUE `-` reads it from stdin. Prints the new token on stderr.
    Put {
        key: String,
        value: String,
        /// The causality token of what this write replaces (from `get`).
        #[arg(long)]
        token: Option<String>,
        #[arg(long)]
        content_type: Option<String>,
        #[command(flatten)]
        kv: KvArgs,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Read a value to stdout (siblings as JSON). Prints the token on stderr. Exits 3
    /// when the key has no live value.
    Get {
        key: String,
        /// Exit 4 when the key has concurrent siblings (they are printed all the same).
        #[arg(long)]
        fail_on_siblings: bool,
        #[command(flatten)]
        kv: KvArgs,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Delete a key. Exits 3 when it had no live value.
    Delete {
        key: String,
        #[arg(long)]
        token: Option<String>,
        #[command(flatten)]
        kv: KvArgs,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Show the cluster's members, as `nodetool status` does.
    Status {
        #[command(flatten)]
        node: NodeArg,
        /// Print the raw `/cluster` JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 if the node answers `/ready` with 200, non-zero with the reason otherwise
    /// (the container health check: the image has no curl).
    Health {
        #[command(flatten)]
        node: NodeArg,
        /// How long to wait for the answer.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Make the node hand its data off, leave the ring and exit.
    Leave {
        #[command(flatten)]
        node: NodeArg,
    },
    /// Take a (dead) member out of the ring; the others re-replicate its ranges.
    Remove {
        /// The member's id, as `ringkv status` shows it.
        id: String,
        /// Remove it even though it is live (it then stops serving, and never starts
        /// again on its data dir). Without it, a live member is refused.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        node: NodeArg,
    },
    /// List keys and values, one per line, in key order.
    List {
        #[arg(long)]
        prefix: Option<String>,
        /// Stop after this many keys.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[command(flatten)]
        kv: KvArgs,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Load a ringkv cluster (or the reference server), and report ops/s, latency
    /// percentiles, errors and server efficiency.
    Bench(Box<BenchArgs>),
}
