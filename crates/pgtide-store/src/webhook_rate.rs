//! Webhook rate limits in the store: one token bucket per rate-limited
//! endpoint in `pgtide.webhook_rate`, shared by every node.
//!
//! A bucket holds up to `burst` tokens (1 when unset) and refills at
//! `requests_per_period / period_seconds` per second. Each take is one
//! upsert: it locks the endpoint's row (or creates it full), refills it for
//! the time elapsed on the database clock, and takes whole tokens, so takes
//! from any number of nodes are serialized on that row and together never
//! exceed the limit. The limit is read from the endpoint's stored
//! `rate_limit` in the same statement and the refill is capped at its burst,
//! so a `PATCH` applies on every node at its next take (a lowered burst
//! clamps the bucket, a new rate refills at that rate) rather than when each
//! node next lists the endpoints.

use std::time::Duration;

use deadpool_postgres::GenericClient;

use crate::{Result, Store};

/// What a take got.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Taken {
    /// Whole tokens granted: at most the number wanted. An endpoint without a
    /// rate limit (or one deleted meanwhile) is granted everything.
    pub granted: u32,
    /// When nothing was granted: how long until the next whole token.
    pub wait: Option<Duration>,
}

/// The take. `$1` the endpoint, `$2` the tokens wanted. `lim` is empty when
/// the endpoint has no rate limit, and then nothing is inserted or returned.
/// Refilling uses `greatest(clock_timestamp(), refilled_at)`, so a clock that
/// steps back (a failover to a server whose clock is behind) refills nothing
/// rather than moving `refilled_at` back and counting the same time twice.
const TAKE: &str = "
    WITH lim AS (
        SELECT greatest((rate_limit->>'requests_per_period')::float8, 1)
                 / greatest((rate_limit->>'period_seconds')::float8, 1) AS per_second,
               greatest(coalesce((rate_limit->>'burst')::float8, 1), 1) AS burst
        FROM pgtide.webhooks WHERE id = $1 AND rate_limit IS NOT NULL
    )
    INSERT INTO pgtide.webhook_rate AS b (webhook_id, tokens, refilled_at, granted)
    SELECT $1, burst - least($2::int4, floor(burst)), clock_timestamp(),
           least($2::int4, floor(burst))::int4
    FROM lim
    ON CONFLICT (webhook_id) DO UPDATE SET (tokens, refilled_at, granted) = (
        SELECT r - least($2::int4, floor(r)), at, least($2::int4, floor(r))::int4
        FROM (SELECT n.at,
                     least(l.burst, b.tokens + l.per_second
                           * greatest(extract(epoch FROM n.at - b.refilled_at)::float8, 0)) AS r
              FROM (SELECT greatest(clock_timestamp(), b.refilled_at) AS at) n, lim l) x)
    RETURNING granted,
              CASE WHEN granted = 0
                   THEN (1 - tokens) / (SELECT per_second FROM lim) END AS wait_seconds";

/// Takes up to `wanted` whole tokens from the endpoint's bucket, through
/// `client` (a connection, or the transaction the tokens are spent in: then
/// a rollback gives them back, and the row stays locked until it ends).
pub(crate) async fn take(
    client: &impl GenericClient,
    webhook_id: &str,
    wanted: u32,
) -> Result<Taken> {
    if wanted == 0 {
        return Ok(Taken {
            granted: 0,
            wait: None,
        });
    }
    let wanted_sql = i32::try_from(wanted).unwrap_or(i32::MAX);
    let row = client.query_opt(TAKE, &[&webhook_id, &wanted_sql]).await?;
    let Some(row) = row else {
        return Ok(Taken {
            granted: wanted,
            wait: None,
        });
    };
    let granted: i32 = row.get(0);
    let wait: Option<f64> = row.get(1);
    Ok(Taken {
        granted: u32::try_from(granted).unwrap_or(0),
        // At least a millisecond: a float rounding to zero must not make a
        // waiting dispatcher spin.
        wait: wait.map(|s| Duration::from_secs_f64(s.clamp(0.001, 1e9))),
    })
}

impl Store {
    /// Takes up to `wanted` whole tokens from a webhook endpoint's shared
    /// bucket in a statement of its own. The dispatcher takes its tokens
    /// inside the claim instead ([`Store::claim_deliveries`] with
    /// `rate_limited`), so that only claimed deliveries spend them.
    pub async fn take_rate_tokens(&self, webhook_id: &str, wanted: u32) -> Result<Taken> {
        let client = self.pool.get().await?;
        take(&client, webhook_id, wanted).await
    }
}
