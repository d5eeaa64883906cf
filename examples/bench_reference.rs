//! The HTTP ceiling of this machine: a trivial axum server with an in-memory map behind
//! the same `/kv/{key}` routes as ringkv. Benchmarks report ringkv's figures as ratios to
//! this one, measured in the same run.
//!
//! `cargo run --release --example bench_reference -- 127.0.0.1:7080`

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

type Map = Arc<RwLock<HashMap<String, Bytes>>>;

async fn get_key(State(map): State<Map>, Path(key): Path<String>) -> Response {
    let value = map.read().ok().and_then(|m| m.get(&key).cloned());
    match value {
        Some(v) => (StatusCode::OK, v).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn put_key(State(map): State<Map>, Path(key): Path<String>, body: Bytes) -> StatusCode {
    match map.write() {
        Ok(mut m) => {
            m.insert(key, body);
            StatusCode::NO_CONTENT
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7080".into());
    let map: Map = Arc::default();
    let app = Router::new()
        .route("/kv/{*key}", get(get_key).put(put_key))
        .with_state(map);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("reference ready http={}", listener.local_addr()?);
    axum::serve(listener, app).await
}
