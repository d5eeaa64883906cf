//! `ringkv leave [--wait]`: asks a node to leave, and with `--wait` follows the hand-off
//! until the node has left and exited, as a progress bar on a terminal and as one line
//! per change of status otherwise (a log, a CI job).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use super::commands::{client, CommandError};
use super::NodeArg;
use crate::client::{Client, ClientError, ClientOptions};

/// How often the node's leave status is read: often enough not to miss the last steps
/// (at least a gossip round long) between the hand-off and the exit.
const POLL: Duration = Duration::from_millis(100);
/// One status read; a node busy handing off still answers `/debug/workers` well within it.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn leave(node: &NodeArg, wait: Option<Duration>) -> Result<(), CommandError> {
    // Failover makes no sense here: "the next node" would be the wrong one to leave.
    if node.node.len() != 1 {
        return Err(CommandError::Usage(format!(
            "leave makes one node leave: give one --node, not {}",
            node.shown()
        )));
    }
    let answer = client(node)?.admin("/admin/leave").await?;
    let status = answer["status"].as_str().unwrap_or("leaving").to_owned();
    let Some(limit) = wait else {
        println!("{status}");
        return Ok(());
    };
    let poller = Client::with_nodes(
        &node.node,
        &node.client_options(ClientOptions {
            timeout: READ_TIMEOUT,
            connect_timeout: READ_TIMEOUT,
            retries: 0,
            ..ClientOptions::default()
        }),
    )?;
    follow(&poller, &node.shown(), limit).await?;
    println!("left");
    Ok(())
}

/// Reads the leave worker's status until the node stops answering. It exits once it has
/// left, so a node that vanishes right after saying "left" has done it; one that vanishes
/// before has not (it crashed, or was killed), and that is an error.
async fn follow(client: &Client, node: &str, limit: Duration) -> Result<(), CommandError> {
    let mut progress = Progress::new(std::io::stderr().is_terminal());
    let started = Instant::now();
    let mut last = String::from("leaving");
    loop {
        match client.get_json("/debug/workers").await {
            Ok(workers) => {
                let status = workers
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|w| w["name"] == "leave")
                    .and_then(|w| w["status"].as_str())
                    .unwrap_or("leaving")
                    .to_owned();
                if status.contains("staying") {
                    progress.finish();
                    return Err(CommandError::LeaveFailed {
                        node: node.to_owned(),
                        reason: status,
                    });
                }
                progress.show(&status);
                last = status;
            }
            Err(e) if refused(&e) => {
                progress.finish();
                return if handed_off(&last) {
                    Ok(())
                } else {
                    Err(CommandError::LeaveFailed {
                        node: node.to_owned(),
                        reason: format!(
                            "it stopped answering before it said it had left (last: {last}); \
                             see `ringkv status` on another node"
                        ),
                    })
                };
            }
            // Busy or restarting its listener: keep asking until the limit.
            Err(e) => progress.show(&format!("{last} (no answer: {e})")),
        }
        if started.elapsed() >= limit {
            progress.finish();
            return Err(CommandError::LeaveFailed {
                node: node.to_owned(),
                reason: format!(
                    "still leaving after {} (--wait-timeout): {last}; the leave goes on",
                    humantime::format_duration(limit)
                ),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether nobody listens any more where the node was: connection refused, down in the
/// error's causes.
fn refused(e: &ClientError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Whether the node had handed everything off by `status`: after that it only records
/// the leave, waits for its peers to hear it, and exits.
fn handed_off(status: &str) -> bool {
    status.starts_with("left") || remaining(status) == Some(0)
}

/// The keys a "moving data: N key(s) remaining" status has left to move.
fn remaining(status: &str) -> Option<u64> {
    status
        .strip_prefix("moving data: ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A bar on a terminal (keys moved out of the most seen remaining), else plain lines.
enum Progress {
    Bar {
        bar: indicatif::ProgressBar,
        most: u64,
    },
    Lines {
        last: String,
    },
}

impl Progress {
    fn new(terminal: bool) -> Progress {
        if terminal {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(style("{spinner} {elapsed:>4} {wide_msg}"));
            bar.enable_steady_tick(Duration::from_millis(120));
            Progress::Bar { bar, most: 0 }
        } else {
            Progress::Lines {
                last: String::new(),
            }
        }
    }

    fn show(&mut self, status: &str) {
        match self {
            Progress::Bar { bar, most } => {
                if let Some(left) = remaining(status) {
                    if *most == 0 && left > 0 {
                        bar.set_style(style(
                            "{bar:30} {pos}/{len} keys handed off {elapsed:>4} {wide_msg}",
                        ));
                    }
                    *most = (*most).max(left);
                    bar.set_length(*most);
                    bar.set_position(*most - left);
                }
                bar.set_message(status.to_owned());
            }
            Progress::Lines { last } => {
                if status != last {
                    eprintln!("leave: {status}");
                    *last = status.to_owned();
                }
            }
        }
    }

    fn finish(&mut self) {
        if let Progress::Bar { bar, .. } = self {
            bar.finish_and_clear();
        }
    }
}

fn style(template: &str) -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
}

#[cfg(test)]
mod tests {
    use super::remaining;

    #[test]
    fn remaining_keys_are_read_from_the_status() {
        assert_eq!(remaining("moving data: 120 key(s) remaining"), Some(120));
        assert_eq!(remaining("moving data: 0 key(s) remaining"), Some(0));
        assert_eq!(remaining("left; waiting for peers to hear it"), None);
    }
}
