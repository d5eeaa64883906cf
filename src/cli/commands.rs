//! The client commands: `put`, `get`, `delete`, `list`, `status`, `health`, `leave`,
//! `remove`.

use std::io::{Read, Write};

use bytes::Bytes;

use super::{Command, NodeArg};
use crate::client::{Client, ClientError, ClientOptions, ReadResult};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("key {0:?} not found")]
    NotFound(String),
    #[error("{node} is not ready: {reason}")]
    NotReady { node: String, reason: String },
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

impl CommandError {
    /// A refused token becomes an error that says what to give, naming the node.
    fn explain_refusal(self, node: Option<&str>) -> CommandError {
        let node = node.unwrap_or("the node").to_owned();
        match self {
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

fn client(node: &NodeArg) -> Result<Client, ClientError> {
    client_with(node, ClientOptions::default())
}

fn client_with(node: &NodeArg, options: ClientOptions) -> Result<Client, ClientError> {
    Client::with_options(&node.node, &node.client_options(options))
}

/// The node a client command talks to.
fn node_of(command: &Command) -> Option<&NodeArg> {
    match command {
        Command::Put { node, .. }
        | Command::Get { node, .. }
        | Command::Delete { node, .. }
        | Command::Status { node, .. }
        | Command::Health { node, .. }
        | Command::Leave { node }
        | Command::Remove { node, .. }
        | Command::List { node, .. } => Some(node),
        Command::Serve(_) | Command::Bench(_) => None,
    }
}

/// Runs one client command. Output goes to stdout; tokens to stderr.
pub async fn run_client(command: Command) -> Result<(), CommandError> {
    let node = node_of(&command).map(|n| n.node.clone());
    run(command)
        .await
        .map_err(|e| e.explain_refusal(node.as_deref()))
}

async fn run(command: Command) -> Result<(), CommandError> {
    match command {
        Command::Serve(_) => unreachable!("serve is not a client command"),
        Command::Bench(_) => {
            unreachable!("the benchmark runs through run_bench")
        }
        Command::Put {
            key,
            value,
            token,
            content_type,
            node,
        } => {
            let value = if value == "-" {
                let mut buf = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut buf)
                    .map_err(CommandError::Stdin)?;
                Bytes::from(buf)
            } else {
                Bytes::from(value)
            };
            let client = client(&node)?;
            let token = client
                .put(&key, value, content_type.as_deref(), token.as_deref())
                .await?;
            eprintln!("{token}");
        }
        Command::Get { key, node } => {
            let client = client(&node)?;
            let mut out = std::io::stdout().lock();
            match client.get(&key).await? {
                None => return Err(CommandError::NotFound(key)),
                Some(ReadResult::Value { data, token, .. }) => {
                    out.write_all(&data).map_err(CommandError::Stdout)?;
                    eprintln!("{token}");
                }
                Some(ReadResult::Siblings { raw, token, .. }) => {
                    writeln!(out, "{raw}").map_err(CommandError::Stdout)?;
                    eprintln!("{token}");
                }
            }
            out.flush().map_err(CommandError::Stdout)?;
        }
        Command::Delete { key, token, node } => {
            let client = client(&node)?;
            if !client.delete(&key, token.as_deref()).await? {
                return Err(CommandError::NotFound(key));
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
                    ..ClientOptions::default()
                },
            )?;
            client.ready().await.map_err(|e| CommandError::NotReady {
                node: node.node.clone(),
                reason: with_causes(&e),
            })?;
            // `/ready` stays 200 through a split ring (the node still serves); health
            // does not, since requests are routed differently depending on the node.
            let cluster = client.cluster().await.map_err(|e| match e {
                // `/cluster` needs the token (`/ready` does not): say so, not "not ready".
                e if e.is_auth_refusal() => CommandError::Client(e),
                e => CommandError::NotReady {
                    node: node.node.clone(),
                    reason: with_causes(&e),
                },
            })?;
            if let Some(reason) = ring_split(&cluster) {
                return Err(CommandError::RingSplit {
                    node: node.node.clone(),
                    reason,
                });
            }
            println!("ready");
        }
        Command::Leave { node } => {
            let answer = client(&node)?.admin("/admin/leave").await?;
            println!("{}", answer["status"].as_str().unwrap_or("leaving"));
        }
        Command::Remove { id, force, node } => {
            let answer = client(&node)?.remove(&id, force).await?;
            println!("{} {}", answer["status"].as_str().unwrap_or("removed"), id);
        }
        Command::List {
            prefix,
            limit,
            node,
        } => {
            let client = client(&node)?;
            let mut out = std::io::stdout().lock();
            let mut cursor: Option<String> = None;
            let mut printed = 0;
            while printed < limit {
                let page = client
                    .list(
                        prefix.as_deref(),
                        (limit - printed).min(1000),
                        cursor.as_deref(),
                    )
                    .await?;
                for item in &page.items {
                    let values: Vec<&str> =
                        item.siblings.iter().map(|s| s.value.as_str()).collect();
                    writeln!(out, "{}\t{}", item.key, values.join("\t"))
                        .map_err(CommandError::Stdout)?;
                }
                printed += page.items.len();
                match page.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
        }
    }
    Ok(())
}

/// An error and its causes on one line: reqwest's own message names the URL, while the
/// cause (connection refused, timed out) is what a health check's reader needs.
fn with_causes(e: &dyn std::error::Error) -> String {
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
