-- Webhooks: endpoints, a durable delivery queue shared by every node, and a
-- record of every attempt.

CREATE TABLE pgtide.webhooks (
    id               text        PRIMARY KEY,          -- a ULID
    -- The organization that owns the endpoint; `all_orgs` (made by an admin)
    -- receives the events of every org, else only this org's and org-less ones.
    org_id           bigint,
    all_orgs         boolean     NOT NULL DEFAULT false,
    url              text        NOT NULL,
    secret           text        NOT NULL,
    event_types      text[],                           -- NULL: every type
    topics           text[],                           -- NULL: every topic
    headers          jsonb       NOT NULL DEFAULT '{}',
    max_retries      integer     NOT NULL DEFAULT 5 CHECK (max_retries >= 0),
    timeout_seconds  integer     NOT NULL DEFAULT 15 CHECK (timeout_seconds > 0),
    rate_limit       jsonb,
    signature_scheme text        NOT NULL DEFAULT 'pgtide'
                                 CHECK (signature_scheme IN ('pgtide', 'standard-webhooks')),
    ordered          boolean     NOT NULL DEFAULT false,
    batch            jsonb,
    -- Fan-out cursor: every event with seq <= cursor_seq has been considered
    -- and, when it matches, has a delivery row. Advanced in the transaction
    -- that inserts those rows.
    cursor_seq       bigint      NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_org ON pgtide.webhooks (org_id);

-- The queue: one row per (endpoint, event) still to deliver or given up on.
-- Delivered rows are deleted; the attempts table keeps the history.
CREATE TABLE pgtide.webhook_deliveries (
    id              bigserial   PRIMARY KEY,
    webhook_id      text        NOT NULL REFERENCES pgtide.webhooks (id) ON DELETE CASCADE,
    event_seq       bigint      NOT NULL,
    event_id        uuid        NOT NULL,
    state           text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'dead')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- A claim: the worker holding `claim` owns the row until `locked_until`.
    claim           uuid,
    locked_until    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (webhook_id, event_seq)
);
CREATE INDEX webhook_deliveries_due
    ON pgtide.webhook_deliveries (webhook_id, event_seq) WHERE state = 'pending';

CREATE TABLE pgtide.webhook_attempts (
    id              text        PRIMARY KEY,           -- X-Pgtide-Delivery-Id, a ULID
    webhook_id      text        NOT NULL REFERENCES pgtide.webhooks (id) ON DELETE CASCADE,
    event_ids       text[]      NOT NULL,
    attempt         integer     NOT NULL,
    status          text        NOT NULL,              -- delivered | failed | dead | test
    status_code     integer,
    latency_ms      bigint      NOT NULL,
    error           text,
    response        text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz
);
CREATE INDEX webhook_attempts_by_webhook ON pgtide.webhook_attempts (webhook_id, created_at);

-- A webhook dead letter points at its delivery row, so a retry re-queues it.
ALTER TABLE pgtide.dead_letters ADD COLUMN webhook_delivery_id bigint;
