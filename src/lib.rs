//! ringkv: a leaderless, Dynamo-style key-value store.
//!
//! Every module, one line each, from the pure core up to the command line:
//! - [`version`]: dotted version vectors, sibling sets and causality tokens (pure logic).
//! - [`quorum`]: N, R and W as configured, a request's quorum, the reply tracker (pure).
//! - [`key`]: what a key may be, and strict percent-decoding of it.
//! - [`merkle`]: the hash tree two replicas compare to find the ranges where they differ.
//! - [`config`]: a node's settings, whatever gave them (flags, environment, tests).
//! - [`store`]: the storage seam, the `Store` trait, with redb and in-memory stores, and
//!   the default page cache from the cgroup memory limit (`store::cache_size`).
//! - [`identity`]: the node id and actor epoch kept in the data dir, and its life marks.
//! - [`kv`]: this node's replica: records, reads, hints, the tree, the group-commit writer.
//! - [`stats`]: counters of what replication did (`/debug/replication`, `/metrics`), and
//!   the request, RPC-latency, quorum-miss and group-commit histograms `/metrics` exports,
//!   and a rolling window of request latencies for the dashboard (`stats::requests`).
//! - [`net`]: the network seam (listeners, gossip sockets, the clock): tokio or turmoil.
//! - [`rpc`]: internode calls: frames, messages, bounds, byte-cut batches, client, server.
//! - [`cluster`]: gossip membership, the ring, the replication policy, persisted views.
//! - [`peers`]: what every part that calls other nodes shares: view, RPC client, clock.
//! - [`coordinator`]: what a client request does across replicas: reads, writes, listings.
//! - [`peer_service`]: answers peers' RPCs from this node's replica (`kv`).
//! - [`handoff`]: hinted handoff: hints delivered to their targets, or rerouted, or expired.
//! - [`antientropy`]: Merkle exchange, moving unowned keys after ring changes, tombstone GC.
//! - [`admin`]: join, leave and remove, and the departed ids every node keeps.
//! - [`readiness`]: why a node is not ready (`/ready`), and seeds nobody answers.
//! - [`http`]: the axum API and its serve loop: routes, errors, limits, auth, overload,
//!   request ids and the access log, `/metrics`, `/openapi.json`, `/debug/*`, the
//!   dashboard at `/`.
//! - [`worker`]: the `Worker` trait and the supervisor that stops workers phase by phase.
//! - [`node`]: `Node::build` wires a node's parts and workers; `run` serves until shutdown.
//! - [`client`]: the API's client, the `ringkv-client` crate (`client/`) re-exported: pooled
//!   keep-alive, failover across nodes, retries of idempotent calls; the CLI and bench use it.
//! - [`bench`]: the load generator of `ringkv bench`: workload, targets, HdrHistogram report.
//! - [`cli`]: the `ringkv` command line: `serve` (and its `--config` file), the client
//!   commands, `bench`, `completions`; byte sizes in flags.
//! - [`telemetry`]: logging to stderr, as text or JSON, naming the node on every line;
//!   the request id that follows a request over RPC to every node it reaches.

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
