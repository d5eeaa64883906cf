//! The client commands: `put`, `get`, `delete`, `list`, `status`, `health`, `leave`,
//! `remove`, `completions` (`list` and `leave` in files of their own).

use std::io::{IsTerminal, Read, Write};

use bytes::Bytes;

use super::{Command, KvArgs, NodeArg};
use crate::client::{Client, ClientError, ClientOptions, ListQuery, ReadResult};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("key {0:?} not found")]
    NotFound(String),
    #[error("key {key:?} has {count} concurrent siblings (--fail-on-siblings)")]
    Siblings { key: String, count: usize },
    /// The node could not be reached: says which address, and what to check.
    #[error("{reason} to {addr} (is a node running? --node / RINGKV_NODE)")]
    Unreachable {
        addr: String,
        reason: String,
        #[source]
        source: ClientError,
    },
    #[error("{node} is not ready: {reason}")]
    NotReady { node: String, reason: String },
    /// A combination of flags clap cannot refuse by itself.
    #[error("{0}")]
    Usage(String),
    #[error("{node} did not leave: {reason}")]
    LeaveFailed { node: String, reason: String },
    #[error("reading stdin: {0}")]
    Stdin(std::io::Error),
    #[error("writing stdout: {0}")]
    Stdout(std::io::Error),
    #[error("{node} serves, but its ring disagrees with its peers: {reason}")]
    RingSplit { node: String, reason: String },
    #[error(
        "{node} refused the request: it needs a valid token (give --auth-token or set \
         RINGKV_TOKEN; {source})"
    )]
    Unauthorized {
        node: String,
        #[source]
        source: ClientError,
    },
    #[error(
        "{node} refused the request: this command needs an admin token (the node has \
         --admin-token-file; {source})"
    )]
    Forbidden {
        node: String,
        #[source]
        source: ClientError,
    },
}

/// How `ringkv` exits: one code per case a script may want to tell apart (README,
/// "Exit codes"). 2 is clap's, for a usage error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Ok = 0,
    Error = 1,
    Usage = 2,
    NotFound = 3,
    Siblings = 4,
    Unavailable = 5,
}

impl CommandError {
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            CommandError::NotFound(_) => ExitStatus::NotFound,
            CommandError::Siblings { .. } => ExitStatus::Siblings,
            CommandError::Usage(_) => ExitStatus::Usage,
            CommandError::Unreachable { .. } | CommandError::NotReady { .. } => {
                ExitStatus::Unavailable
            }
            CommandError::Client(e) if e.is_unavailable() => ExitStatus::Unavailable,
            _ => ExitStatus::Error,
        }
    }

    /// A refused token becomes an error that says what to give, naming the node; a node
    /// that cannot be reached, one that says where and what to check.
    fn explain(self, node: Option<&str>) -> CommandError {
        let node = node.unwrap_or("the node").to_owned();
        match self {
            CommandError::Client(ClientError::Transport(e)) if e.is_connect() => {
                let addr = e
                    .url()
                    .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
                    .unwrap_or(node);
                CommandError::Unreachable {
                    addr,
                    reason: connect_reason(&e),
                    source: ClientError::Transport(e),
                }
            }
            CommandError::Client(source @ ClientError::Api { status: 401, .. }) => {
                CommandError::Unauthorized { node, source }
            }
            CommandError::Client(source @ ClientError::Api { status: 403, .. }) => {
                CommandError::Forbidden { node, source }
            }
            other => other,
        }
    }
}

/// What went wrong under a connect error, in the words an operator searches for.
fn connect_reason(e: &reqwest::Error) -> String {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                std::io::ErrorKind::TimedOut => "connection timed out".into(),
                _ => format!("cannot connect ({io})"),
            };
        }
        source = cause.source();
    }
    if e.is_timeout() {
        "connection timed out".into()
    } else {
        "cannot connect".into()
    }
}

/// An error and its causes on one line, each cause once: reqwest's own message names the
/// URL, while the cause (connection refused, timed out) is what the reader needs.
pub fn error_line(e: &dyn std::error::Error) -> String {
    with_causes(e)
}

pub(super) fn client(node: &NodeArg) -> Result<Client, ClientError> {
    client_with(node, ClientOptions::default())
}

fn client_with(node: &NodeArg, options: ClientOptions) -> Result<Client, ClientError> {
    Client::with_nodes(&node.node, &node.client_options(options))
}

/// A client for a KV command: its nodes, with the command's `--r`, `--w`, `--timeout`.
fn kv_client(node: &NodeArg, kv: &KvArgs) -> Result<Client, ClientError> {
    Ok(client(node)?.with(kv.call_options()))
}

/// The node a client command talks to.
fn node_of(command: &Command) -> Option<&NodeArg> {
    match command {
        Command::Put { node, .. }
        | Command::Get { node, .. }
        | Command::Delete { node, .. }
        | Command::Status { node, .. }
        | Command::Health { node, .. }
        | Command::Leave { node, .. }
        | Command::Remove { node, .. }
        | Command::List { node, .. } => Some(node),
        Command::Serve(_) | Command::Bench(_) | Command::Completions { .. } => None,
    }
}

/// Runs one client command. Output goes to stdout; tokens to stderr.
pub async fn run_client(command: Command) -> Result<(), CommandError> {
    let node = node_of(&command).map(NodeArg::shown);
    run(command).await.map_err(|e| e.explain(node.as_deref()))
}

async fn run(command: Command) -> Result<(), CommandError> {
    match command {
        Command::Serve(_) => unreachable!("serve is not a client command"),
        Command::Bench(_) => {
            unreachable!("the benchmark runs through run_bench")
        }
        Command::Completions { shell } => {
            let mut out = std::io::stdout().lock();
            super::write_completions(shell, &mut out);
            out.flush().map_err(CommandError::Stdout)?;
        }
        Command::Put {
            key,
            value,
            token,
            content_type,
            out,
            kv,
            node,
        } => {
            let quiet = out.quiet;
            let value = if value == "-" {
                let mut buf = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut buf)
                    .map_err(CommandError::Stdin)?;
                Bytes::from(buf)
            } else {
                Bytes::from(value)
            };
            let client = kv_client(&node, &kv)?;
            let token = client
                .put(&key, value, content_type.as_deref(), token.as_deref())
                .await?;
            if !quiet {
                eprintln!("{token}");
            }
        }
        Command::Get {
            key,
            fail_on_siblings,
            out,
            kv,
            node,
        } => {
            let client = kv_client(&node, &kv)?;
            let quiet = out.quiet;
            let terminal = std::io::stdout().is_terminal();
            let mut out = std::io::stdout().lock();
            let token = |t: &str| {
                if !quiet {
                    eprintln!("{t}");
                }
            };
            match client.get(&key).await? {
                ReadResult::NotFound { .. } => return Err(CommandError::NotFound(key)),
                ReadResult::Value { data, token: t, .. } => {
                    write_value(&mut out, &data, terminal)?;
                    token(&t);
                }
                ReadResult::Siblings {
                    raw,
                    token: t,
                    siblings,
                } => {
                    write_value(&mut out, raw.as_bytes(), terminal)?;
                    token(&t);
                    if fail_on_siblings {
                        return Err(CommandError::Siblings {
                            key,
                            count: siblings.len(),
                        });
                    }
                }
            }
        }
        Command::Delete {
            key,
            token,
            out,
            kv,
            node,
        } => {
            let client = kv_client(&node, &kv)?;
            let deleted = client.delete(&key, token.as_deref()).await?;
            if !deleted.found {
                return Err(CommandError::NotFound(key));
            }
            if !out.quiet && !deleted.token.is_empty() {
                eprintln!("{}", deleted.token);
            }
        }
        Command::Status { node, json } => {
            let client = client(&node)?;
            let cluster = client.cluster().await?;
            let mut out = std::io::stdout().lock();
            let text = if json {
                serde_json::to_string_pretty(&cluster).unwrap_or_default()
            } else {
                status_table(&cluster)
            };
            writeln!(out, "{text}").map_err(CommandError::Stdout)?;
        }
        Command::Health { node, timeout } => {
            let client = client_with(
                &node,
                ClientOptions {
                    timeout,
                    connect_timeout: timeout,
                    // One answer within `timeout`: a health check is not retried.
                    retries: 0,
                    ..ClientOptions::default()
                },
            )?;
            client.ready().await.map_err(|e| CommandError::NotReady {
                node: node.shown(),
                reason: with_causes(&e),
            })?;
            // `/ready` stays 200 through a split ring (the node still serves); health
            // does not, since requests are routed differently depending on the node.
            let cluster = client.cluster().await.map_err(|e| match e {
                // `/cluster` needs the token (`/ready` does not): say so, not "not ready".
                e if e.is_auth_refusal() => CommandError::Client(e),
                e => CommandError::NotReady {
                    node: node.shown(),
                    reason: with_causes(&e),
                },
            })?;
            if let Some(reason) = ring_split(&cluster) {
                return Err(CommandError::RingSplit {
                    node: node.shown(),
                    reason,
                });
            }
            println!("ready");
        }
        Command::Leave {
            wait,
            wait_timeout,
            node,
        } => super::leave::leave(&node, wait.then_some(wait_timeout)).await?,
        Command::Remove { id, force, node } => {
            let answer = client(&node)?.remove(&id, force).await?;
            println!("{} {}", answer["status"].as_str().unwrap_or("removed"), id);
        }
        Command::List {
            prefix,
            start,
            end,
            limit,
            keys_only,
            json,
            kv,
            node,
        } => {
            let client = kv_client(&node, &kv)?;
            let query = ListQuery {
                prefix,
                start,
                end,
                page_size: None,
            };
            let format = match (json, keys_only) {
                (true, keys_only) => super::list::Format::Json { keys_only },
                (false, true) => super::list::Format::Keys,
                (false, false) => super::list::Format::Lines,
            };
            super::list::list(&client, query, limit, format).await?;
        }
    }
    Ok(())
}

/// Writes a value as it is; on a terminal, ends it with a newline if it has none, so the
/// prompt does not land after it. A pipe gets the bytes exactly.
fn write_value(out: &mut impl Write, data: &[u8], terminal: bool) -> Result<(), CommandError> {
    out.write_all(data).map_err(CommandError::Stdout)?;
    if terminal && !data.ends_with(b"\n") {
        out.write_all(b"\n").map_err(CommandError::Stdout)?;
    }
    out.flush().map_err(CommandError::Stdout)
}

/// An error and its causes on one line: reqwest's own message names the URL, while the
/// cause (connection refused, timed out) is what a health check's reader needs.
pub(super) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out.replace('\n', " ")
}

/// What `/cluster` says of a split ring, if it reports one: which members route with
/// another ring than this node's.
fn ring_split(c: &serde_json::Value) -> Option<String> {
    if c["ring_agreement"].as_bool() != Some(false) {
        return None;
    }
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_owned();
    let others: Vec<String> = c["ring_disagreements"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| format!("{} has ring {}", s(&d["id"]), s(&d["ring_hash"])))
        .collect();
    Some(format!(
        "this node has ring {}; {}",
        s(&c["ring_hash"]),
        others.join(", ")
    ))
}

/// `/cluster` as a table: one row per member, like `nodetool status`.
fn status_table(c: &serde_json::Value) -> String {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_owned();
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0) * 100.0;
    let eff = &c["effective"];
    let mut out = format!(
        "cluster {}  ring {}  N={} R={} W={}  (this node {})\n",
        s(&c["cluster_id"]),
        s(&c["ring_hash"]),
        eff["n"],
        eff["r"],
        eff["w"],
        s(&c["node_id"]),
    );
    if let Some(reason) = ring_split(c) {
        out.push_str(&format!("WARNING: ring disagreement: {reason}\n"));
    }
    if c["rejoining"].as_bool() == Some(true) {
        out.push_str("WARNING: this node is rejoining: it takes no KV request until its peers confirm its ring\n");
    }
    out.push_str(&format!(
        "{:<4} {:<16}  {:<8} {:<21} {:<21} {:>7} {:>9} {:>12} {:>8}\n",
        "", "ID", "STATE", "HTTP", "RPC", "OWNS", "REPLICAS", "HINTS HELD", "TO MOVE"
    ));
    let hints = &c["hints_pending"];
    for m in c["members"].as_array().into_iter().flatten() {
        let id = s(&m["id"]);
        let held = hints[&id]["count"].as_u64().unwrap_or(0);
        out.push_str(&format!(
            "{:<4} {:<16}  {:<8} {:<21} {:<21} {:>6.1}% {:>8.1}% {:>12} {:>8}\n",
            if m["live"].as_bool() == Some(true) {
                "UP"
            } else {
                "DOWN"
            },
            id,
            s(&m["state"]),
            s(&m["http_addr"]),
            s(&m["rpc_addr"]),
            f(&m["ownership"]),
            f(&m["replica_share"]),
            held,
            m["to_move"]
                .as_u64()
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
        ));
    }
    // A member whose storage refuses writes is UP for reads; say so under the table.
    for m in c["members"].as_array().into_iter().flatten() {
        if m["writable"].as_bool() == Some(false) {
            out.push_str(&format!(
                "warning: {} takes no writes (its disk is full, or an fsync failed; see its \
                 /ready); writes go to other replicas, reads are still served\n",
                s(&m["id"])
            ));
        }
    }
    out.trim_end().to_owned()
}
