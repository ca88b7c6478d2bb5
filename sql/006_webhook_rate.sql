-- Webhook rate limits shared by every node: one token bucket per rate-limited
-- endpoint, so several nodes claiming from the same queue together stay within
-- the endpoint's `rate_limit`. The row is created full by the first take and
-- refilled lazily by each take from the database clock (`clock_timestamp()`),
-- so nodes whose clocks disagree still agree on the bucket.

CREATE TABLE pgtide.webhook_rate (
    webhook_id  text             PRIMARY KEY REFERENCES pgtide.webhooks (id) ON DELETE CASCADE,
    -- Tokens left after the last take; at most the endpoint's burst.
    tokens      double precision NOT NULL CHECK (tokens >= 0),
    -- When `tokens` was last brought up to date.
    refilled_at timestamptz      NOT NULL,
    -- What the last take granted: the take's upsert returns it, since
    -- RETURNING sees only the new row (before PostgreSQL 18).
    granted     integer          NOT NULL DEFAULT 0
);
