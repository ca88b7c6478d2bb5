-- Events by topic and org: a non-admin may register a topic only when no
-- stored event of another org (or of no org) is on it, and that question is
-- answered from this index (a few index probes, never a scan of the events).
-- The registry's compatibility check reads a topic's events through it too.
CREATE INDEX events_topic_org ON pgtide.events (topic, org_id);
