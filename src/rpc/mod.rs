//! Internode RPC: length-delimited rmp-serde frames over the network seam's streams, with
//! pooled, multiplexed connections and a timeout on every call.
//!
//! - [`batch`]: cuts every bulk message by encoded bytes against the frame limit (pure).
//! - [`bounds`]: clamps or refuses what a peer asks for, before any handler runs.
//! - [`remote_error`]: the error a peer answers with, and how this node's errors become one.
//! - [`handshake`]: the mutual proof of the cluster secret that opens every connection.
//! - [`reader`]: reads frames under a per-frame deadline and a node-wide byte budget.

pub mod batch;
pub mod bounds;
pub mod client;
pub mod frame;
pub mod handshake;
pub mod message;
pub mod reader;
pub mod remote_error;
pub mod server;

pub use batch::{BatchLimit, Batcher};
pub use client::{connector_for, Connector, RpcClient, RpcError};
pub use frame::{FrameError, RpcConfig, RpcStats, RpcStatsSnapshot};
pub use handshake::{Authenticator, HandshakeError};
pub use message::{Envelope, ForwardedWrite, Request, Response, ScanRange, PROTOCOL_VERSION};
pub use reader::ReadBudget;
pub use remote_error::RemoteError;
pub use server::{serve, RpcHandler};
