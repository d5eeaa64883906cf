//! `ringkv list`: pages of `GET /kv` printed as they come, up to `--limit` keys.

use std::io::Write;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::commands::CommandError;
use crate::client::{Client, ListItem, ListQuery, MAX_PAGE_SIZE};

/// How each key is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `KEY<TAB>VALUE[<TAB>VALUE…]`: text as is, other bytes as base64.
    Lines,
    /// `KEY`.
    Keys,
    /// JSON lines, one object per key: a stream `jq` reads as it comes, and a listing of
    /// any length never has to be held whole (one JSON document would be).
    Json { keys_only: bool },
}

/// Prints up to `limit` keys of `query`, in key order. When there are more, says so on
/// stderr, with the `--start` that goes on from there.
pub async fn list(
    client: &Client,
    query: ListQuery,
    limit: u64,
    format: Format,
) -> Result<(), CommandError> {
    let mut out = std::io::stdout().lock();
    let mut cursor: Option<String> = None;
    let mut printed: u64 = 0;
    // The key after the last one printed, when there is one: asking for one key more
    // than is left tells "more follow" from "that was all" without guessing.
    let mut next_key = None;
    'pages: loop {
        let room = limit.saturating_sub(printed).saturating_add(1);
        let ask = u32::try_from(room).unwrap_or(u32::MAX).min(MAX_PAGE_SIZE);
        let page = client
            .list_page(&query.clone().page_size(ask), cursor.as_deref())
            .await?;
        for item in &page.items {
            if printed == limit {
                next_key = Some(item.key.clone());
                break 'pages;
            }
            writeln!(out, "{}", render(item, format)).map_err(CommandError::Stdout)?;
            printed += 1;
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    out.flush().map_err(CommandError::Stdout)?;
    if let Some(key) = next_key {
        eprintln!(
            "stopped at --limit {limit}; more keys follow: go on with --start {} (and the \
             same --prefix/--end)",
            shell_quote(&key)
        );
    }
    Ok(())
}

fn render(item: &ListItem, format: Format) -> String {
    match format {
        Format::Keys => item.key.clone(),
        Format::Lines => {
            let mut line = item.key.clone();
            for s in &item.siblings {
                line.push('\t');
                match std::str::from_utf8(&s.value) {
                    Ok(text) => line.push_str(text),
                    Err(_) => line.push_str(&STANDARD.encode(&s.value)),
                }
            }
            line
        }
        Format::Json { keys_only: true } => serde_json::json!({ "key": item.key }).to_string(),
        Format::Json { keys_only: false } => {
            let siblings: Vec<serde_json::Value> = item
                .siblings
                .iter()
                .map(|s| {
                    let (value, encoding) = match std::str::from_utf8(&s.value) {
                        Ok(text) => (text.to_owned(), "utf8"),
                        Err(_) => (STANDARD.encode(&s.value), "base64"),
                    };
                    serde_json::json!({
                        "value": value,
                        "encoding": encoding,
                        "content_type": s.content_type,
                    })
                })
                .collect();
            serde_json::json!({
                "key": item.key,
                "siblings": siblings,
                "causality_token": item.token,
            })
            .to_string()
        }
    }
}

/// `key` as one shell word: bare when it is plain, else in single quotes.
fn shell_quote(key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:@%+=,".contains(c));
    if plain {
        key.to_owned()
    } else {
        format!("'{}'", key.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_quoted_for_the_shell_when_needed() {
        assert_eq!(shell_quote("user/42"), "user/42");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
    }
}
