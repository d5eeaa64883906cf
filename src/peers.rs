//! What every part that talks to other nodes shares: the cluster view, the RPC client,
//! the clock, and the bound on one internode call. The coordinator, hinted handoff,
//! anti-entropy and the membership admin each hold one [`Peers`], plus what only they need.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::cluster::membership::ClusterView;
use crate::net::Clock;
use crate::rpc::client::{RpcClient, RpcError};
use crate::rpc::{Request, Response};

/// A node's way to its peers; cheap to clone.
#[derive(Clone)]
pub struct Peers {
    /// The latest cluster view, and a way to wait for changes.
    pub view: watch::Receiver<Arc<ClusterView>>,
    pub rpc: Arc<RpcClient>,
    pub clock: Arc<dyn Clock>,
    /// Bound on one internode call (`--rpc-timeout`).
    pub rpc_timeout: Duration,
}

impl Peers {
    /// The view as it is now.
    pub fn view(&self) -> Arc<ClusterView> {
        self.view.borrow().clone()
    }

    /// One call to the node at `addr`, bounded by [`Peers::rpc_timeout`].
    pub async fn call(&self, addr: SocketAddr, request: Request) -> Result<Response, RpcError> {
        self.rpc.call(addr, request, self.rpc_timeout).await
    }
}
