//! Hears about commits made by other pgtide nodes (and by this one through
//! other connections) so live readers wake at once instead of polling.
//!
//! Migration 005 fires `NOTIFY pgtide_events, '<last_seq>'` whenever a write
//! commits; [`Store::follow_commits`] listens on its own connection and feeds
//! the payload into [`Store::committed_seq`]. A notice is only a hint: readers
//! still ask the table for `seq > last`, and after a reconnect the current
//! `seq_counter` is read once so a notice missed while disconnected costs
//! nothing.

use std::time::Duration;

use futures_util::StreamExt;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use crate::Store;

/// The channel migration 005 notifies on.
pub const CHANNEL: &str = "pgtide_events";

impl Store {
    /// Listens for commit notices until `shutdown`, reconnecting after failures.
    pub async fn follow_commits(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(250);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                result = self.listen_once() => {
                    match result {
                        Ok(()) => backoff = Duration::from_millis(250),
                        Err(e) => {
                            tracing::warn!(error = %e, "commit listener lost its connection; reconnecting");
                        }
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// One connection's life: LISTEN, catch up once, then forward notices
    /// until the connection ends.
    async fn listen_once(&self) -> Result<(), String> {
        let tls = self.config.make_tls().map_err(|e| e.to_string())?;
        let (client, mut connection) = self
            .config
            .tokio_config()
            .connect(tls)
            .await
            .map_err(|e| e.to_string())?;
        let (tx, mut notices) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(|cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx.send(n.payload().to_owned()).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(())
        });
        let setup = async {
            client
                .batch_execute(&format!("LISTEN {CHANNEL}"))
                .await
                .map_err(|e| e.to_string())?;
            let row = client
                .query_one("SELECT last_seq FROM pgtide.seq_counter", &[])
                .await
                .map_err(|e| e.to_string())?;
            Ok::<i64, String>(row.get(0))
        };
        match setup.await {
            Ok(seq) => self.note_committed(seq),
            Err(e) => {
                driver.abort();
                return Err(e);
            }
        }
        while let Some(payload) = notices.recv().await {
            match payload.parse::<i64>() {
                Ok(seq) => self.note_committed(seq),
                Err(_) => tracing::debug!(payload, "ignoring a malformed commit notice"),
            }
        }
        drop(client);
        driver.await.map_err(|e| e.to_string())?
    }
}
