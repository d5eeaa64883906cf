//! The `ringkv` command line: `serve` runs a node; the other commands are clients.
//!
//! - `serve`: a node's flags and its run; `config_file`: `serve --config`, under the flags.
//! - `commands`: the client commands and their errors and exit codes; `list` and `leave`
//!   have files of their own (paging, progress).
//! - `bench`: the load generator's flags. `size`: byte sizes in flags (`256MiB`).

mod bench;
mod commands;
pub mod config_file;
mod leave;
mod list;
mod serve;
pub mod size;

use clap::{Parser, Subcommand};

pub use bench::{run_and_print, run_bench, BenchArgs, BenchOptions};
pub use commands::{error_line, run_client, CommandError, ExitStatus};
pub use config_file::{parse, ConfigFileError, ParseError, Parsed};
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
    #[command(after_help = "Examples:
  ringkv serve --data-dir ./n1
  ringkv serve --data-dir ./n2 --http-addr 127.0.0.1:7080 --rpc-addr 127.0.0.1:7081 \\
               --gossip-addr 127.0.0.1:7947 --seed 127.0.0.1:7946
  ringkv serve --config ringkv.toml --max-hint-bytes 512MiB
  ringkv serve --config ringkv.toml --check-config

Sizes take units: 1048576, 64KiB, 256MiB, 1GiB, 10MB. Durations too: 500ms, 30s, 1h.")]
    Serve(Box<ServeArgs>),
    /// Write a value. VALUE `-` reads it from stdin. Prints the new token on stderr.
    #[command(after_help = "Examples:
  ringkv put user/42 '{\"name\":\"Ada\"}' --content-type application/json
  ringkv put photo.jpg - < photo.jpg
  ringkv put cart apples --token \"$TOKEN\" --w all")]
    Put {
        key: String,
        value: String,
        /// The causality token of what this write replaces (from `get`).
        #[arg(long)]
        token: Option<String>,
        #[arg(long)]
        content_type: Option<String>,
        #[command(flatten)]
        out: QuietArg,
        #[command(flatten)]
        kv: KvArgs,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Read a value to stdout (siblings as JSON), ending with a newline on a terminal
    /// only. Prints the token on stderr. Exits 3 when the key has no live value.
    #[command(after_help = "Examples:
  ringkv get user/42
  ringkv get user/42 -q > user42.json
  TOKEN=$(ringkv get cart 2>&1 >/dev/null)
  ringkv get cart --r all --fail-on-siblings")]
    Get {
        key: String,
        /// Exit 4 when the key has concurrent siblings (they are printed all the same).
        #[arg(long)]
        fail_on_siblings: bool,
        #[command(flatten)]
        out: QuietArg,
        #[command(flatten)]
        kv: KvArgs,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Delete a key. Prints the tombstone's token on stderr. Exits 3 when it had no live
    /// value.
    #[command(after_help = "Examples:
  ringkv delete user/42
  ringkv delete cart --token \"$TOKEN\" -q")]
    Delete {
        key: String,
        #[arg(long)]
        token: Option<String>,
        #[command(flatten)]
        out: QuietArg,
        #[command(flatten)]
        kv: KvArgs,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Show the cluster's members, as `nodetool status` does.
    #[command(after_help = "Examples:
  ringkv status
  ringkv status --node http://10.0.0.2:7070 --json")]
    Status {
        #[command(flatten)]
        node: NodeArg,
        /// Print the raw `/cluster` JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 if the node answers `/ready` with 200, non-zero with the reason otherwise
    /// (the container health check: the image has no curl).
    #[command(after_help = "Examples:
  ringkv health
  ringkv health --node http://127.0.0.1:7080 --timeout 500ms || echo not ready")]
    Health {
        #[command(flatten)]
        node: NodeArg,
        /// How long to wait for the answer.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Make the node hand its data off, leave the ring and exit.
    #[command(after_help = "Examples:
  ringkv leave --node http://127.0.0.1:7080
  ringkv leave --node http://127.0.0.1:7080 --wait --wait-timeout 30m")]
    Leave {
        /// Wait until the node has handed its data off and exited, showing its progress
        /// (a bar on a terminal, a line per change otherwise).
        #[arg(long)]
        wait: bool,
        /// With --wait: give up (exit 1) after this long; the leave goes on.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        wait_timeout: std::time::Duration,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Take a (dead) member out of the ring; the others re-replicate its ranges.
    #[command(after_help = "Examples:
  ringkv remove 3f2a9c0d1e4b5a67
  ringkv remove 3f2a9c0d1e4b5a67 --force")]
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
    /// List keys and values in key order: one line per key, KEY TAB VALUE (siblings'
    /// values tab-separated). Says on stderr when it stopped at --limit, and how to go on.
    #[command(after_help = "Examples:
  ringkv list --prefix user/
  ringkv list --start user/100 --end user/200 --keys-only
  ringkv list --prefix user/ --json | jq -r .key")]
    List {
        /// Keys that start with this.
        #[arg(long)]
        prefix: Option<String>,
        /// The first key (inclusive).
        #[arg(long)]
        start: Option<String>,
        /// The key to stop before (exclusive).
        #[arg(long)]
        end: Option<String>,
        /// Stop after this many keys.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
        limit: u64,
        /// Print the keys only, one a line.
        #[arg(long)]
        keys_only: bool,
        /// Print JSON lines: one object per key, `{"key", "siblings": [{"value",
        /// "encoding", "content_type"}], "causality_token"}`, values as the HTTP API
        /// gives them (`utf8` text, or `base64`).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        kv: KvArgs,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Load a ringkv cluster (or the reference server), and report ops/s, latency
    /// percentiles, errors and server efficiency.
    #[command(after_help = "Examples:
  ringkv bench --duration 30s --concurrency 64 --read-ratio 0.9 --preload
  ringkv bench --url http://127.0.0.1:7070,http://127.0.0.1:7080 --value-size 4KiB --json")]
    Bench(Box<BenchArgs>),
    /// Print a shell completion script on stdout.
    #[command(after_help = "Examples:
  ringkv completions bash > /etc/bash_completion.d/ringkv
  ringkv completions zsh > \"${fpath[1]}/_ringkv\"
  ringkv completions fish > ~/.config/fish/completions/ringkv.fish")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `--quiet`: for scripts that want the value and nothing else.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct QuietArg {
    /// Do not print the causality token on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Writes the completion script for `shell` to `out`.
pub fn write_completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    use clap::CommandFactory;
    clap_complete::generate(shell, &mut Cli::command(), "ringkv", out);
}
