//! The simulated nodes: real `ringkv` nodes as turmoil hosts, on the simulated network
//! and disk.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use ringkv::config::{Addrs, BlockingMode, FsyncMode, NodeConfig};
use ringkv::quorum::Replication;
use ringkv::store::{MemoryStore, RedbStore, Store};
use tokio_util::sync::CancellationToken;

use crate::config::{Scenario, SimConfig, Storage, LARGE_VALUES_FRAME_BYTES};
use crate::disk::{Fence, SimDisk};
use crate::gossip::Envelopes;
use crate::net::TurmoilNetwork;
use crate::sabotage::{Sabotage, SabotagedStore};
use crate::workload::{node_name, HTTP_PORT};

pub const RPC_PORT: u16 = 7071;
pub const GOSSIP_PORT: u16 = 7946;
/// redb's page cache per simulated node: small, the key space is small.
const CACHE_BYTES: usize = 4 * 1024 * 1024;

/// What survives a node's restarts: the fence of its open disk, or its in-memory store.
#[derive(Default)]
pub struct NodeSlot {
    pub fence: RefCell<Option<Fence>>,
    pub memory: RefCell<Option<Arc<MemoryStore>>>,
}

pub type Slots = Rc<Vec<Rc<NodeSlot>>>;

/// The secret every simulated node holds.
pub const SIM_CLUSTER_SECRET: &[u8] = b"ringkv simulation cluster secret";

/// A node's config: every port on the wildcard address, advertising the host's own.
pub fn node_config(config: &SimConfig, index: usize) -> NodeConfig {
    let mut c = NodeConfig::for_test();
    let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
    c.addrs = Addrs {
        http: any(HTTP_PORT),
        rpc: any(RPC_PORT),
        gossip: any(GOSSIP_PORT),
        advertise_host: Some(turmoil::lookup(node_name(index))),
    };
    // Node 1 founds the cluster; the others join through it. Seeds are ip:port: a
    // hostname would go to the real resolver.
    if index != 1 {
        c.cluster.seeds = vec![format!("{}:{GOSSIP_PORT}", turmoil::lookup(node_name(1)))];
    }
    c.cluster.cluster_id = "sim".into();
    // Every run authenticates its cluster, so the RPC handshake and signed gossip run
    // under every fault. A constant secret and nonces from the seeded RNG keep it
    // deterministic.
    c.security.cluster_secret = Some(
        ringkv::config::ClusterSecret::new(SIM_CLUSTER_SECRET)
            .expect("the constant is long enough"),
    );
    c.cluster.gossip_interval = config.gossip_interval;
    c.cluster.rpc_timeout = config.rpc_timeout;
    c.cluster.handoff_interval = config.handoff_interval;
    c.cluster.anti_entropy_interval = config.anti_entropy_interval;
    c.cluster.repair_wait = config.rpc_timeout;
    // Nothing in a run is old enough to expire or be collected: the checker counts a
    // collected tombstone as surviving, and a run is minutes long at most.
    c.cluster.dead_node_grace = std::time::Duration::from_secs(24 * 3600);
    c.cluster.tombstone_grace = std::time::Duration::from_secs(24 * 3600);
    c.cluster.max_hint_age = std::time::Duration::from_secs(24 * 3600);
    c.data_dir = "/data".into();
    c.fsync = FsyncMode::Always;
    c.blocking = BlockingMode::Inline;
    c.replication = Replication {
        n: config.n,
        r: config.r,
        w: config.w,
    };
    c.request_timeout = config.request_timeout;
    c.rng_seed = Some(config.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ index as u64);
    if config.scenario == Scenario::LargeValues {
        // A frame of 1 MiB holds about nine values: a hint batch, a move of unowned keys or an
        // anti-entropy exchange bounded only by its count would overflow it at once. The
        // value and sibling caps shrink with it, as the node insists they must.
        c.limits.max_frame_bytes = LARGE_VALUES_FRAME_BYTES;
        c.limits.max_value_bytes = 128 * 1024;
        c.limits.max_siblings = 6;
    }
    c
}

/// The host's software: opens its store and runs the node until the host is crashed.
pub async fn run_node(
    config: SimConfig,
    index: usize,
    slot: Rc<NodeSlot>,
    envelopes: Envelopes,
) -> turmoil::Result {
    let node_config = node_config(&config, index);
    let store: Arc<dyn Store> = match config.storage {
        Storage::Disk => {
            let (disk, fence) = SimDisk::open(Path::new("/data"), "ringkv.redb")?;
            *slot.fence.borrow_mut() = Some(fence);
            Arc::new(RedbStore::open_with_backend(disk, CACHE_BYTES)?)
        }
        Storage::Memory => slot
            .memory
            .borrow_mut()
            .get_or_insert_with(|| Arc::new(MemoryStore::new()))
            .clone(),
    };
    // Without sabotage the node runs on its store as is, so a clean run takes exactly the
    // path it always took.
    let (store, sabotaged) = match config.sabotage {
        Sabotage::None => (store, None),
        fault => {
            let s = Arc::new(SabotagedStore::new(store, fault));
            (s.clone() as Arc<dyn Store>, Some(s))
        }
    };
    let shutdown = CancellationToken::new();
    let result = ringkv::node::run_with_store(
        node_config,
        TurmoilNetwork::new(envelopes),
        store,
        shutdown,
        |_| {
            if let Some(s) = &sabotaged {
                s.arm();
            }
        },
    )
    .await;
    // A node that left, or refuses to start on a left node's data, simply stops: that is
    // the product's behaviour, not a failure of the run.
    if let Err(e) = result {
        tracing::info!(node = index, error = %e, "node stopped");
    }
    Ok(())
}
