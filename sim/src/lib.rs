//! ringkv's deterministic simulation: real ringkv nodes, the same code as production,
//! inside turmoil, attacked by a nemesis and judged by a checker. The same seed replays
//! the same run, bit for bit.
//!
//! Module map:
//! - [`config`]: what a run does (cluster, workload, faults, timings) and the scenarios.
//! - [`net`], [`gossip`]: the network seam over turmoil TCP and UDP.
//! - [`disk`]: redb on turmoil's simulated disk.
//! - [`sabotage`]: the `--sabotage` faults, as a store wrapper under a node.
//! - [`cluster`]: nodes as turmoil hosts.
//! - [`http`], [`workload`]: the clients and their recorded history ([`history`]).
//! - [`nemesis`]: the fault schedule.
//! - [`collect`], [`checker`]: the final state, and the invariants judged on it.
//! - [`run`]: one run, start to verdict; [`sweep`]: many seeds.
//! - [`entropy`], [`trace`]: what makes runs replayable, and the hash that proves it.
//! - [`cli`]: `ringkv-sim run|sweep`.

pub mod checker;
pub mod cli;
pub mod cluster;
pub mod collect;
pub mod config;
pub mod disk;
pub mod entropy;
pub mod gossip;
pub mod history;
pub mod http;
pub mod nemesis;
pub mod net;
pub mod run;
pub mod sabotage;
pub mod sweep;
pub mod trace;
pub mod workload;
