//! Internode RPC: length-delimited rmp-serde frames over the network seam's streams, with
//! pooled, multiplexed connections and a timeout on every call.
//!
//! - [`batch`]: cuts every bulk message by encoded bytes against the frame limit (pure).
//! - [`bounds`]: clamps or refuses what a peer asks for, before any handler runs.
//! - [`remote_error`]: the error a peer answers with, and how this node's errors become one.

pub mod batch;
pub mod bounds;
pub mod client;
pub mod frame;
pub mod message;
pub mod remote_error;
pub mod server;

pub use batch::{BatchLimit, Batcher};
pub use client::{connector_for, Connector, RpcClient, RpcError};
pub use frame::{FrameError, RpcConfig, RpcStats, RpcStatsSnapshot};
pub use message::{Envelope, ForwardedWrite, Request, Response, ScanRange, PROTOCOL_VERSION};
pub use remote_error::RemoteError;
pub use server::{serve, RpcHandler};
