//! The client commands: `put`, `get`, `delete`, `list`.

use std::io::{Read, Write};

use bytes::Bytes;

use super::Command;
use crate::client::{Client, ClientError, ReadResult};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("key {0:?} not found")]
    NotFound(String),
    #[error("reading stdin: {0}")]
    Stdin(std::io::Error),
    #[error("writing stdout: {0}")]
    Stdout(std::io::Error),
}

/// Runs one client command. Output goes to stdout; tokens to stderr.
pub async fn run_client(command: Command) -> Result<(), CommandError> {
    match command {
        Command::Serve(_) => unreachable!("serve is not a client command"),
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
            let client = Client::new(&node.node)?;
            let token = client
                .put(&key, value, content_type.as_deref(), token.as_deref())
                .await?;
            eprintln!("{token}");
        }
        Command::Get { key, node } => {
            let client = Client::new(&node.node)?;
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
            let client = Client::new(&node.node)?;
            if !client.delete(&key, token.as_deref()).await? {
                return Err(CommandError::NotFound(key));
            }
        }
        Command::List {
            prefix,
            limit,
            node,
        } => {
            let client = Client::new(&node.node)?;
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
