-- The doorbell rings once per statement, not once per row.
--
-- Until now `notification_insert_notify` ran FOR EACH ROW and sent one pg_notify per inserted
-- row, each with the row's id as its payload: a bulk INSERT of a million rows queued a million
-- notifications (and a commit-time dedup pass over them) that the listener never read, since a
-- notification is only a doorbell: whatever its payload, the listener drains every pending row.
--
-- Now a statement-level trigger looks at the statement's inserted rows (its transition table,
-- `inserted`) and sends one notification, with an empty payload, if any of them is one the
-- listener can claim now: the rule of V5's WHEN clause, `status = 'pending' AND parent_id IS
-- NULL` (the BEFORE trigger has already made future rows `scheduled`; a topic's subscriber rows
-- are written by the listener that drains them next). So:
-- - a multi-row INSERT, an INSERT … SELECT and a COPY ring once (statement triggers fire for COPY);
-- - an `INSERT … ON CONFLICT DO NOTHING` that inserts nothing fires the trigger with an empty
--   transition table, and rings nothing;
-- - a statement of only scheduled rows, or of only subscriber rows, rings nothing;
-- - several statements in one transaction ring once at commit: Postgres folds notifications of
--   the same channel and payload within a transaction into one.
-- A statement-level trigger with a transition table is also allowed on a partitioned table (its
-- rows come from every partition), which a row-level one is not.
--
-- Online: DROP TRIGGER and CREATE TRIGGER change the catalog only; both take the table's lock for
-- an instant, in this one transaction, so no insert ever commits without a doorbell. As in V5,
-- lock_timeout makes the migration fail (and the next start try again) rather than queue every
-- producer's insert behind a long transaction that holds the table.
SET LOCAL lock_timeout = '5s';

CREATE FUNCTION notification_ring_doorbell() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted WHERE status = 'pending' AND parent_id IS NULL) THEN
        PERFORM pg_notify('notification_insert', '');
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER notification_insert_notify ON notification;
CREATE TRIGGER notification_insert_notify
    AFTER INSERT ON notification
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION notification_ring_doorbell();

DROP FUNCTION notification_notify_insert();
