//! Whether this node's storage takes writes, as the writer last found it. The writer alone
//! changes it; gossip announces it (`cluster::membership`), `/ready` and `ringkv status`
//! show it, and coordinators route writes around a node that does not take them.

use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteState {
    #[default]
    Writable,
    /// A write failed for lack of space (ENOSPC/EDQUOT). Writes are refused with 507
    /// while the writer probes on a timer; once a probe commit succeeds, writes resume.
    NoSpace,
    /// An fsync failed. No later write is acknowledged until the node restarts, because
    /// a later fsync that succeeds proves nothing about the pages the failed one lost.
    SyncFailed,
}

impl WriteState {
    pub fn takes_writes(self) -> bool {
        self == WriteState::Writable
    }

    /// The name gossip and `/ready` use.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteState::Writable => "writable",
            WriteState::NoSpace => "no_space",
            WriteState::SyncFailed => "fsync_failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "writable" => Some(WriteState::Writable),
            "no_space" => Some(WriteState::NoSpace),
            "fsync_failed" => Some(WriteState::SyncFailed),
            _ => None,
        }
    }

    /// What an operator is told.
    pub fn explain(self) -> &'static str {
        match self {
            WriteState::Writable => "takes writes",
            WriteState::NoSpace => {
                "the data dir's disk is full: writes are refused (507) and routed to other \
                 replicas; reads are served; writes resume by themselves once space returns"
            }
            WriteState::SyncFailed => {
                "an fsync failed: this node acknowledges no writes until it is restarted \
                 (a later fsync would prove nothing); reads are served"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in [
            WriteState::Writable,
            WriteState::NoSpace,
            WriteState::SyncFailed,
        ] {
            assert_eq!(WriteState::parse(s.as_str()), Some(s));
            assert_eq!(s.takes_writes(), s == WriteState::Writable);
        }
        assert_eq!(WriteState::parse("full"), None);
    }
}
