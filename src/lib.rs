//! ringkv: a leaderless, Dynamo-style key-value store.
//!
//! The crate, bottom to top:
//! - [`version`]: dotted version vectors, sibling sets, causality tokens (pure logic).
//! - [`quorum`]: N, R and W as configured, the quorum a request names, and the reply
//!   tracker (pure logic); how they clamp to the rings is `cluster::policy`'s.
//! - [`key`]: key validation and strict percent-decoding.
//! - [`store`]: the [`store::Store`] trait with redb and in-memory implementations (redb's
//!   panics caught, a failed fsync told apart, reopened in place after a full disk).
//! - [`identity`]: the node id kept in the data dir, and the epoch of its actor.
//! - [`kv`]: this node's replica: checksummed records (a corrupt one reads as missing),
//!   reads, the group-commit writer that applies every mutation inside one transaction,
//!   and whether the storage takes writes (`kv::writable`).
//! - [`coordinator`]: what a request does beneath HTTP (one node for now).
//! - [`peer_service`]: answers peers' RPCs: reads, merges, hints, scans and digests go to
//!   [`kv`], forwarded writes to [`coordinator`]; [`rpc::remote_error`] maps the errors.
//! - [`net`]: the network seam: listeners and the clock come in through
//!   [`net::Network`], so the same node runs on tokio sockets and inside turmoil.
//! - [`http`]: the axum API, its error shape and limits.
//! - [`peers`]: what every part that calls other nodes shares (view, RPC client, clock,
//!   call timeout).
//! - [`worker`]: the `Worker` trait and the supervisor that starts and stops a node's
//!   workers in phases, each within a deadline (`/debug/workers`).
//! - [`node`]: wires a whole node (`Node::build`) and runs it as a set of workers.
//! - [`readiness`]: why a node is not ready (the reasons `/ready` reports), and the report
//!   of seeds nobody answers.
//! - [`client`]: an HTTP client for the API (pooled keep-alive), used by the CLI and
//!   by `ringkv bench`.
//! - [`bench`]: the load generator behind `ringkv bench`: targets (ringkv, etcd, Redis,
//!   the reference), workload, HdrHistogram reports, server CPU and `/metrics` figures.
//! - [`cli`] and [`telemetry`]: the `ringkv` command line and its logging.

// A panic in a node is a dropped request at best: non-test code handles every error, and
// each remaining `expect` says in a comment why it cannot fail.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod admin;
pub mod antientropy;
pub mod bench;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod coordinator;
pub mod handoff;
pub mod http;
pub mod identity;
pub mod key;
pub mod kv;
pub mod merkle;
pub mod net;
pub mod node;
pub mod peer_service;
pub mod peers;
pub mod quorum;
pub mod readiness;
pub mod rpc;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod version;
pub mod worker;
