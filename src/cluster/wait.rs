//! Waiting until the cluster view (or any watched value) satisfies a condition, or the
//! caller's shutdown comes first: the one loop that joining, leaving and readiness share.

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The first value of `rx` (the current one included) for which `pred` holds; `None` if
/// `shutdown` is cancelled first or the sender is gone. Marks what it saw as seen.
pub async fn wait_for<T: Clone>(
    rx: &mut watch::Receiver<T>,
    mut pred: impl FnMut(&T) -> bool,
    shutdown: &CancellationToken,
) -> Option<T> {
    tokio::select! {
        // Shutdown first: a node that stops should not begin what the wait was for.
        biased;
        _ = shutdown.cancelled() => None,
        seen = rx.wait_for(|v| pred(v)) => seen.ok().map(|v| v.clone()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn returns_the_current_value_when_it_holds_already() {
        let (_tx, mut rx) = watch::channel(3u32);
        let got = wait_for(&mut rx, |v| *v == 3, &CancellationToken::new()).await;
        assert_eq!(got, Some(3));
        assert!(!rx.has_changed().expect("sender alive"), "marked seen");
    }

    #[tokio::test]
    async fn waits_for_the_first_value_that_holds() {
        let (tx, mut rx) = watch::channel(0u32);
        let feeder = tokio::spawn(async move {
            for v in 1..=10 {
                tokio::time::sleep(Duration::from_millis(2)).await;
                if tx.send(v).is_err() {
                    return;
                }
            }
            // Keep the sender alive until the waiter is done.
            tx.closed().await;
        });
        let got = wait_for(&mut rx, |v| *v >= 5, &CancellationToken::new()).await;
        // Values may be skipped between sends, never reordered: the first seen ≥ 5.
        assert!(got.is_some_and(|v| (5..=10).contains(&v)), "{got:?}");
        drop(rx);
        feeder.await.expect("feeder");
    }

    #[tokio::test]
    async fn shutdown_or_a_dropped_sender_ends_the_wait_with_none() {
        let (tx, mut rx) = watch::channel(0u32);
        let shutdown = CancellationToken::new();
        let waiter = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move { wait_for(&mut rx, |v| *v > 100, &shutdown).await })
        };
        tx.send(1).expect("receiver alive");
        shutdown.cancel();
        assert_eq!(waiter.await.expect("waiter"), None);

        // Cancelled before the wait even starts: None, though the value holds.
        let mut rx = tx.subscribe();
        assert_eq!(wait_for(&mut rx, |_| true, &shutdown).await, None);

        let mut rx = tx.subscribe();
        drop(tx);
        let live = CancellationToken::new();
        assert_eq!(wait_for(&mut rx, |v| *v > 100, &live).await, None);
    }
}
