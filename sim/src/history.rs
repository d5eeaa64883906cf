//! The history a run records: every invocation and every response, per client.

use std::fmt;

use crate::http::NoReply;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Read,
    /// A write without a token.
    BlindWrite,
    /// A write with the token of the client's preceding read (read-modify-write).
    TokenWrite,
    Delete,
    /// A write with a forged token (the hostile client): whatever it claims, it may
    /// supersede no more than a blind write through the same node would.
    ForgedWrite,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    NoReply(NoReply),
}

#[derive(Clone, Debug)]
pub struct Event {
    pub client: usize,
    pub key: String,
    /// The node the request went to (1-based).
    pub node: usize,
    pub kind: OpKind,
    pub start_ms: u64,
    pub end_ms: u64,
    /// The value a write sent: unique in the run.
    pub value: Option<String>,
    pub token_in: Option<String>,
    pub outcome: Outcome,
    pub token_out: Option<String>,
    /// `X-Ringkv-Dot` of an acknowledged write: the version it created.
    pub dot: Option<String>,
    /// Values a read returned (tombstones are not returned).
    pub read: Vec<String>,
}

impl Event {
    /// A write the cluster acknowledged: it must never be lost.
    pub fn is_acked_write(&self) -> bool {
        self.kind != OpKind::Read && self.outcome == Outcome::Status(204)
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>7}ms..{:>7}ms c{} n{} {:?} {}",
            self.start_ms, self.end_ms, self.client, self.node, self.kind, self.key
        )?;
        if let Some(v) = &self.value {
            write!(f, " value={v}")?;
        }
        if self.token_in.is_some() {
            write!(f, " with-token")?;
        }
        match &self.outcome {
            Outcome::Status(s) => write!(f, " -> {s}")?,
            Outcome::NoReply(r) => write!(f, " -> no reply ({r:?})")?,
        }
        if let Some(d) = &self.dot {
            write!(f, " dot={d}")?;
        }
        if !self.read.is_empty() {
            write!(f, " read={:?}", self.read)?;
        }
        Ok(())
    }
}
