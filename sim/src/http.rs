//! A small HTTP/1.1 client over turmoil TCP, for the workload and the checker. One
//! connection per request: simple, and a partition never strands a pooled connection.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

use crate::net::TracedStream;

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Why a request got no answer. The client cannot tell whether the server acted on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoReply {
    Connect,
    Io,
    Timeout,
}

pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&'static str, String)],
    body: Bytes,
    timeout: Duration,
) -> Result<Reply, NoReply> {
    match tokio::time::timeout(timeout, exchange(addr, method, path, headers, body)).await {
        Ok(r) => r,
        Err(_) => Err(NoReply::Timeout),
    }
}

async fn exchange(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&'static str, String)],
    body: Bytes,
) -> Result<Reply, NoReply> {
    let stream = TracedStream::connect_untraced(addr)
        .await
        .map_err(|_| NoReply::Connect)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| NoReply::Io)?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    let req = req.body(Full::new(body)).map_err(|_| NoReply::Io)?;
    let result = async {
        let resp = sender.send_request(req).await.map_err(|_| NoReply::Io)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|_| NoReply::Io)?
            .to_bytes();
        let mut record = format!("{addr} {status}").into_bytes();
        for (name, value) in headers.iter().filter(|(n, _)| *n != hyper::header::DATE) {
            record.extend_from_slice(name.as_str().as_bytes());
            record.extend_from_slice(value.as_bytes());
        }
        record.extend_from_slice(&body);
        crate::trace::record(b"http-reply", &record);
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
    .await;
    driver.abort();
    result
}
