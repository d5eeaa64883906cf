//! ringkv-client: a client of ringkv's HTTP API, without the node's dependencies.
//!
//! - [`client`]: [`Client`], its nodes and the send loop: failover to the next node,
//!   retries with backoff of idempotent calls only.
//! - [`kv`]: `get`, `head`, `put`, `delete`, `batch` (and the bench's `exists`,
//!   `put_blind`).
//! - [`list`]: `GET /kv` as a stream of pages ([`ListQuery`]).
//! - [`admin`]: `/ready`, `/cluster`, the admin routes, JSON debug routes.
//! - [`options`]: [`ClientOptions`] (fixed per client) and [`CallOptions`] (`r`, `w`,
//!   timeout, per call).
//! - [`wire`]: the JSON bodies, with values decoded to bytes.
//! - [`error`]: [`ClientError`], which keeps its cause.
//!
//! ```no_run
//! # async fn run() -> Result<(), ringkv_client::ClientError> {
//! use bytes::Bytes;
//! use ringkv_client::{CallOptions, Client, ClientOptions, ReadResult};
//!
//! // Two nodes of one cluster: a call that cannot reach the first goes to the second.
//! // `host:port` without a scheme is `http://host:port`.
//! let client = Client::with_nodes(["127.0.0.1:7070", "127.0.0.1:7071"], &ClientOptions::default())?;
//!
//! let token = client.put("greeting", Bytes::from("hello"), Some("text/plain"), None).await?;
//! match client.get("greeting").await? {
//!     ReadResult::Value { data, .. } => assert_eq!(data, "hello"),
//!     ReadResult::Siblings { siblings, .. } => println!("{} concurrent values", siblings.len()),
//!     ReadResult::NotFound { .. } => println!("gone"),
//! }
//! // A write with the token of a read supersedes exactly what that read saw.
//! let token = client.put("greeting", Bytes::from("hi"), None, Some(&token)).await?;
//! // Per call: wait for every replica, for at most two seconds.
//! let strict = client.with(CallOptions::new().w("all").timeout(std::time::Duration::from_secs(2)));
//! let deleted = strict.delete("greeting", Some(&token)).await?;
//! assert!(deleted.found);
//! // A 404 still has a token: of the tombstone it saw.
//! let gone = client.get("greeting").await?;
//! assert!(!gone.is_found() && !gone.token().is_empty());
//! # Ok(()) }
//! ```
// Calls never panic on what a node sends; tests may unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod admin;
pub mod client;
pub mod error;
pub mod kv;
pub mod list;
pub mod options;
pub mod wire;

pub use client::Client;
pub use error::ClientError;
pub use kv::{Deleted, HeadResult, ReadResult, TOKEN_HEADER};
pub use list::{ListQuery, MAX_PAGE_SIZE};
pub use options::{AuthToken, CallOptions, ClientOptions, MAX_BACKOFF};
pub use wire::{BatchOp, BatchResult, ListItem, ListPage, Sibling};

/// `README.md`'s example, compiled with the doctests so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExample;
