-- Durable consumers of /ws/exactly-once: where each one is, and which events
-- it has acknowledged. An acknowledged event is never sent to it again.

CREATE TABLE pgtide.consumers (
    name          text        PRIMARY KEY,
    org_id        bigint,
    pattern       text        NOT NULL,
    filter        jsonb       NOT NULL DEFAULT '{}',
    -- Every event with seq <= acked_seq is acknowledged (or not for it).
    acked_seq     bigint      NOT NULL,
    -- The highest seq ever sent: unacknowledged events at or below it are
    -- redeliveries.
    delivered_seq bigint      NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Acknowledgements above the contiguous `acked_seq`, folded into it as the gap closes.
CREATE TABLE pgtide.consumer_acks (
    consumer text   NOT NULL REFERENCES pgtide.consumers (name) ON DELETE CASCADE,
    seq      bigint NOT NULL,
    PRIMARY KEY (consumer, seq)
);
