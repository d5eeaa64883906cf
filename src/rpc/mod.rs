//! Internode RPC: length-delimited rmp-serde frames over the network seam's streams, with
//! pooled, multiplexed connections and a timeout on every call.

pub mod message;

pub use message::{Envelope, ForwardedWrite, RemoteError, Request, Response, PROTOCOL_VERSION};
