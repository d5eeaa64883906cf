//! The typed `/cluster` document (`ringkv::http::ClusterJson`): what a real node answers
//! reads back into it without losing a field, and the rings rebuilt from its members (as
//! `ringkv-tools verify` rebuilds them) hash to what every node reports.

mod common;

use common::cluster::*;
use ringkv::http::ClusterJson;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_document_round_trips_and_rebuilds_the_rings() {
    let cluster = Cluster::start(3, &["--vnodes", "16"]).await;
    for (i, node) in cluster.nodes.iter().enumerate() {
        let raw = cluster_json(node).await;
        let doc: ClusterJson = serde_json::from_value(raw.clone()).unwrap_or_else(|e| {
            panic!("node {}: /cluster is not a ClusterJson: {e}\n{raw}", i + 1)
        });
        // Serialised again it is the very answer: the type holds every field the node sends.
        assert_eq!(serde_json::to_value(&doc).unwrap(), raw, "node {}", i + 1);
        assert_eq!(doc.self_id().unwrap().to_string(), node.node_id);
        assert_eq!(doc.members.len(), 3, "node {}: {raw}", i + 1);
        let (read, write) = doc.rings().unwrap();
        assert_eq!(read.len(), 3);
        assert_eq!(read.hash_hex(), doc.ring_hash, "node {}", i + 1);
        assert_eq!(write.hash_hex(), doc.write_ring_hash, "node {}", i + 1);
    }
}
