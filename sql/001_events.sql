-- The event store: one global, gap-free-in-commit-order sequence and the events.

-- A single row whose lock every writer takes (UPDATE ... RETURNING) for the
-- duration of its transaction. Writers therefore commit in seq order, so a
-- reader who has seen seq <= N and asks for seq > N never misses a later commit
-- of a lower number.
CREATE TABLE pgtide.seq_counter (
    id       boolean PRIMARY KEY DEFAULT true CHECK (id),
    last_seq bigint  NOT NULL
);
INSERT INTO pgtide.seq_counter (id, last_seq) VALUES (true, 0);

CREATE TABLE pgtide.events (
    seq            bigint      PRIMARY KEY,
    id             uuid        NOT NULL,   -- the envelope's ULID, as 128 bits
    topic          text        NOT NULL,
    type           text        NOT NULL,
    ts             timestamptz NOT NULL,
    source         text        NOT NULL,
    data           jsonb       NOT NULL,
    org_id         bigint,
    correlation_id text,
    attributes     jsonb       NOT NULL DEFAULT '{}',
    meta           jsonb       NOT NULL DEFAULT '{}'
);
CREATE UNIQUE INDEX events_id ON pgtide.events (id);
CREATE INDEX events_ts ON pgtide.events USING brin (ts);

-- How far the CDC pipeline has stored, per slot: the commit LSN of the last
-- stored transaction and the position of its last stored event. Written in the
-- same transaction as the events, so a replay after a crash skips exactly
-- what is already stored.
CREATE TABLE pgtide.cdc_progress (
    slot       text        PRIMARY KEY,
    commit_lsn pg_lsn      NOT NULL,
    tx_pos     integer     NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The last column set seen for each captured relation, so an ALTER TABLE is
-- noticed (and announced once) even across restarts.
CREATE TABLE pgtide.relations (
    slot       text   NOT NULL,
    relid      oid    NOT NULL,
    name       text   NOT NULL,
    columns    jsonb  NOT NULL,
    PRIMARY KEY (slot, relid)
);

-- Events that could not be stored as events (mapping failures, invalid
-- payloads) or delivered (webhooks), kept with the reason.
CREATE TABLE pgtide.dead_letters (
    id         bigserial   PRIMARY KEY,
    kind       text        NOT NULL CHECK (kind IN ('validation', 'mapping', 'webhook')),
    topic      text,
    event      jsonb       NOT NULL,
    error      text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Transactional publishing from SQL: the event travels through the WAL as a
-- logical message, so it exists only if the calling transaction commits.
CREATE FUNCTION pgtide.publish(
    topic text,
    data jsonb,
    attributes jsonb DEFAULT '{}',
    event_type text DEFAULT NULL
) RETURNS pg_lsn
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    dotted text := replace(topic, '/', '.');
BEGIN
    IF dotted IS NULL OR dotted !~ '^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$' THEN
        RAISE EXCEPTION 'pgtide.publish: invalid topic %', quote_nullable(topic)
            USING HINT = 'segments of letters, digits, _ and - joined by dots, e.g. orders.created';
    END IF;
    IF attributes IS NOT NULL AND jsonb_typeof(attributes) <> 'object' THEN
        RAISE EXCEPTION 'pgtide.publish: attributes must be a JSON object of strings, got %', jsonb_typeof(attributes);
    END IF;
    RETURN pg_logical_emit_message(
        true,
        'pgtide.publish',
        jsonb_build_object(
            'topic', dotted,
            'data', data,
            'attributes', coalesce(attributes, '{}'::jsonb),
            'event_type', event_type
        )::text
    );
END
$$;
