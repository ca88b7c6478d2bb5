-- Wakes every pgtide node when events commit. Every seq-assigning write
-- updates the seq_counter row, so one row trigger there covers every writer
-- (CDC batches, HTTP and socket publishes, any node). NOTIFY is delivered at
-- commit and only if the transaction commits; listeners treat it as a hint and
-- still read `seq > last` from the table, so a lost notice only delays.
CREATE FUNCTION pgtide.notify_committed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgtide_events', NEW.last_seq::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER seq_counter_notify
    AFTER UPDATE ON pgtide.seq_counter
    FOR EACH ROW EXECUTE FUNCTION pgtide.notify_committed();
