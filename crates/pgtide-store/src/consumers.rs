//! Durable consumer cursors for `/ws/exactly-once`.
//!
//! A consumer's position is `acked_seq` (everything at or below it is done)
//! plus the acknowledgements above it; `delivered_seq` remembers how far it
//! was sent, so what is resent after a reconnect is marked `redelivered`.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::{Result, Store, StoreError};

/// A consumer as loaded at (re)connect.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerState {
    pub name: String,
    pub org_id: Option<i64>,
    pub acked_seq: i64,
    pub delivered_seq: i64,
    /// Acknowledged seqs above `acked_seq`.
    pub acked_above: BTreeSet<i64>,
}

impl Store {
    /// Loads a consumer, creating it when new: it starts after `from_seq`, or
    /// after the newest stored event. A consumer belongs to the org that made it.
    pub async fn open_consumer(
        &self,
        name: &str,
        org_id: Option<i64>,
        admin: bool,
        pattern: &str,
        filter: &Value,
        from_seq: Option<i64>,
    ) -> Result<ConsumerState> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let start = match from_seq {
            Some(s) => s,
            None => tx
                .query_one("SELECT last_seq FROM pgtide.seq_counter", &[])
                .await?
                .get(0),
        };
        tx.execute(
            "INSERT INTO pgtide.consumers (name, org_id, pattern, filter, acked_seq, delivered_seq)
             VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (name) DO NOTHING",
            &[&name, &org_id, &pattern, filter, &start],
        )
        .await?;
        let row = tx
            .query_one(
                "SELECT org_id, acked_seq, delivered_seq FROM pgtide.consumers WHERE name = $1 FOR UPDATE",
                &[&name],
            )
            .await?;
        let owner: Option<i64> = row.get(0);
        if !admin && owner != org_id {
            return Err(StoreError::ReadOnly(format!(
                "consumer {name:?} belongs to another organization"
            )));
        }
        tx.execute(
            "UPDATE pgtide.consumers SET pattern = $2, filter = $3, updated_at = now() WHERE name = $1",
            &[&name, &pattern, filter],
        )
        .await?;
        let acked_above = tx
            .query(
                "SELECT seq FROM pgtide.consumer_acks WHERE consumer = $1",
                &[&name],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        tx.commit().await?;
        Ok(ConsumerState {
            name: name.to_owned(),
            org_id: owner,
            acked_seq: row.get(1),
            delivered_seq: row.get(2),
            acked_above,
        })
    }

    /// Records an acknowledgement durably, folding contiguous ones into
    /// `acked_seq`. `next_pending` is the lowest seq still unacknowledged
    /// (or the first not yet sent) after this ack, as the caller knows it.
    pub async fn ack_consumer(&self, name: &str, seq: i64, new_acked_seq: i64) -> Result<()> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO pgtide.consumer_acks (consumer, seq) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&name, &seq],
        )
        .await?;
        tx.execute(
            "UPDATE pgtide.consumers SET acked_seq = greatest(acked_seq, $2), updated_at = now() WHERE name = $1",
            &[&name, &new_acked_seq],
        )
        .await?;
        tx.execute(
            "DELETE FROM pgtide.consumer_acks WHERE consumer = $1 AND seq <= $2",
            &[&name, &new_acked_seq],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Remembers how far a consumer was sent.
    pub async fn consumer_delivered(&self, name: &str, seq: i64) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE pgtide.consumers SET delivered_seq = greatest(delivered_seq, $2) WHERE name = $1",
                &[&name, &seq],
            )
            .await?;
        Ok(())
    }
}
