-- Topic ownership, and pgtide.publish() refusing pgtide's own topics and types.

-- The org that owns a topic: only it (or an admin) may change or delete the
-- topic through the API. NULL: no owner org (created by an admin, by a token
-- without an org, declared in a file, or registered before ownership
-- existed), so only admins may change it (file topics: only their file).
ALTER TABLE pgtide.topics ADD COLUMN org_id bigint;

-- The same function as 001's, plus the reserved-topic rule of
-- pgtide_core::reserved (kept in step by a unit test of pgtide-store). SQL
-- always refuses: pgtide's --allow-reserved-publish does not reach here.
CREATE OR REPLACE FUNCTION pgtide.publish(
    topic text,
    data jsonb,
    attributes jsonb DEFAULT '{}',
    event_type text DEFAULT NULL
) RETURNS pg_lsn
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    dotted text := replace(topic, '/', '.');
    dotted_type text;
BEGIN
    IF dotted IS NULL OR dotted !~ '^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$' THEN
        RAISE EXCEPTION 'pgtide.publish: invalid topic %', quote_nullable(topic)
            USING HINT = 'segments of letters, digits, _ and - joined by dots, e.g. orders.created';
    END IF;
    IF split_part(dotted, '.', 1) IN ('meta', 'system', 'connections', 'tables', 'presence', 'sync') THEN
        RAISE EXCEPTION 'pgtide.publish: topic % is reserved', quote_literal(dotted)
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'meta., system., connections., tables., presence. and sync. topics carry pgtide''s own events';
    END IF;
    dotted_type := replace(coalesce(event_type, dotted), '/', '.');
    IF split_part(dotted_type, '.', 1) IN ('row', 'table', 'schema') THEN
        RAISE EXCEPTION 'pgtide.publish: event type % is reserved', quote_literal(dotted_type)
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'row.*, table.* and schema.* types are pgtide''s own';
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
