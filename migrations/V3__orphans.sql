-- A notification whose last open targets are deleted — its devices deleted (say, to erase a
-- user), their delivery rows with them (ON DELETE CASCADE) — would stay queued or retrying for
-- good: nothing else is left to finish it. This trigger settles such notifications in the
-- deleting transaction by the usual status rule: delivered if a remaining target was, otherwise
-- failed (with one notification_failed row), naming why when no target is left at all.
-- Notifications being deleted themselves (retention) or reset to pending (a retry) are not
-- queued or retrying, so they are left alone.
CREATE FUNCTION delivery_settle_orphans() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    WITH orphaned AS (
        SELECT n.id FROM notification n
         WHERE n.id IN (SELECT DISTINCT notification_id FROM gone)
           AND n.status IN ('queued', 'retrying')
           AND NOT EXISTS (SELECT 1 FROM delivery d
                            WHERE d.notification_id = n.id AND d.status IN ('queued', 'retrying'))
           FOR UPDATE
    ), agg AS (
        SELECT o.id,
               coalesce(bool_or(d.status = 'delivered'), false) AS delivered,
               max(d.delivered_at) AS delivered_at,
               string_agg(DISTINCT d.last_error, '; ') FILTER (WHERE d.status = 'failed') AS errors
          FROM orphaned o LEFT JOIN delivery d ON d.notification_id = o.id
         GROUP BY o.id
    ), done AS (
        UPDATE notification n
           SET status = CASE WHEN agg.delivered THEN 'delivered' ELSE 'failed' END,
               delivered_at = CASE WHEN agg.delivered THEN agg.delivered_at END,
               last_error = CASE WHEN agg.delivered THEN n.last_error
                                 ELSE coalesce(agg.errors, 'not delivered: every target was deleted with its device') END,
               updated_at = now()
          FROM agg
         WHERE n.id = agg.id
     RETURNING n.id, n.user_id, n.status, n.last_error, n.attempt_count, n.payload
    )
    INSERT INTO notification_failed (notification_id, user_id, error, attempt_count, payload)
    SELECT id, user_id, last_error, attempt_count, payload FROM done WHERE status = 'failed';
    RETURN NULL;
END
$$;

CREATE TRIGGER delivery_deleted_settle_orphans
    AFTER DELETE ON delivery
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION delivery_settle_orphans();
