//! `GET /kv` as a [`Stream`] of pages: the cursor of one page asks for the next.

use futures_util::stream::{self, Stream};
use reqwest::StatusCode;

use crate::client::{api_error, Idempotent};
use crate::wire::ListBodyJson;
use crate::{Client, ClientError, ListPage};

/// The node's largest page (`limit` is 1 to 1000).
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Which keys a listing walks, in byte order: those with `prefix`, from `start`
/// (inclusive) to `end` (exclusive), `page_size` per request (the node's default, 100,
/// when `None`; clamped to 1..=1000).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub prefix: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub page_size: Option<u32>,
}

impl ListQuery {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    pub fn start(mut self, start: impl Into<String>) -> Self {
        self.start = Some(start.into());
        self
    }

    pub fn end(mut self, end: impl Into<String>) -> Self {
        self.end = Some(end.into());
        self
    }

    pub fn page_size(mut self, n: u32) -> Self {
        self.page_size = Some(n);
        self
    }

    fn params(&self, r: Option<&str>, cursor: Option<&str>) -> Vec<(&'static str, String)> {
        let mut params = Vec::new();
        let mut add = |name, value: Option<&str>| {
            if let Some(v) = value {
                params.push((name, v.to_owned()));
            }
        };
        add("prefix", self.prefix.as_deref());
        add("start", self.start.as_deref());
        add("end", self.end.as_deref());
        add("cursor", cursor);
        add("r", r);
        if let Some(n) = self.page_size {
            params.push(("limit", n.clamp(1, MAX_PAGE_SIZE).to_string()));
        }
        params
    }
}

impl Client {
    /// One page of the listing, from `cursor` (the start when `None`).
    pub async fn list_page(
        &self,
        query: &ListQuery,
        cursor: Option<&str>,
    ) -> Result<ListPage, ClientError> {
        let params = query.params(self.call_r(), cursor);
        let resp = self
            .send(Idempotent::Yes, |http, base| {
                http.get(format!("{base}/kv")).query(&params)
            })
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(api_error(resp).await);
        }
        let body: ListBodyJson = self.json(resp, "a listing page").await?;
        body.decode()
    }

    /// Every page of the listing, one request each, fetched as the stream is polled. It
    /// ends after the last page, or after the first error (which it yields).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), ringkv_client::ClientError> {
    /// use futures_util::TryStreamExt;
    /// use ringkv_client::{Client, ListQuery};
    ///
    /// let client = Client::new("127.0.0.1:7070")?;
    /// let mut pages = std::pin::pin!(client.list(ListQuery::new().prefix("user/")));
    /// while let Some(page) = pages.try_next().await? {
    ///     for item in page.items {
    ///         println!("{} ({} siblings)", item.key, item.siblings.len());
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn list(
        &self,
        query: ListQuery,
    ) -> impl Stream<Item = Result<ListPage, ClientError>> + Send + 'static {
        // The state: where the next page starts; `None` once the last page was read.
        let start: Option<Option<String>> = Some(None);
        let client = self.clone();
        stream::unfold(start, move |state| {
            let client = client.clone();
            let query = query.clone();
            async move {
                let cursor = state?;
                match client.list_page(&query, cursor.as_deref()).await {
                    Ok(page) => {
                        let next = page.next_cursor.clone().map(Some);
                        Some((Ok(page), next))
                    }
                    Err(e) => Some((Err(e), None)),
                }
            }
        })
    }
}
