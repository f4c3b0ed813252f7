-- What producers expect: idempotency keys, scheduled and expiring sends, collapse keys, topics.
--
-- Safe on a table with millions of rows: every statement here changes the catalog only.
-- - ADD COLUMN of a nullable column without a default and DROP NOT NULL rewrite nothing.
-- - The new CHECK constraints are NOT VALID: Postgres enforces them on every row inserted or
--   updated from now on, and skips the scan of the rows already there. Those rows satisfy them
--   already: user_id was NOT NULL (so exactly one of user_id, topic is set), and every status they
--   hold is in the new set. `ALTER TABLE … VALIDATE CONSTRAINT` can prove it later, online.
-- - The indexes on `notification` are not built here: refinery runs a migration in a transaction,
--   where CREATE INDEX would hold off every insert for the length of a table scan. They are built
--   by `notify-relay migrate` right after, with CREATE INDEX CONCURRENTLY (src/migrate.rs).
-- - lock_timeout: the ALTERs need the table's lock for an instant; waiting behind a long
--   transaction for it would queue every producer's insert behind the migration. Fail instead,
--   and let the next start try again.
SET LOCAL lock_timeout = '5s';

ALTER TABLE notification
    ALTER COLUMN user_id DROP NOT NULL,
    ADD COLUMN idempotency_key text,
    ADD COLUMN send_at         timestamptz,
    ADD COLUMN expires_at      timestamptz,
    ADD COLUMN collapse_key    text,
    ADD COLUMN topic           text,
    -- A subscriber's own row of a topic notification names the topic row it came from.
    ADD COLUMN parent_id       uuid,
    -- How far a topic notification's fan-out got: the last subscriber (user_id) given a row.
    ADD COLUMN fanout_cursor   text;

ALTER TABLE notification DROP CONSTRAINT notification_status_check;
ALTER TABLE notification ADD CONSTRAINT notification_status_check
    CHECK (status IN ('pending', 'scheduled', 'queued', 'retrying', 'delivered', 'failed', 'expired', 'cancelled'))
    NOT VALID;
ALTER TABLE notification ADD CONSTRAINT notification_one_audience
    CHECK ((user_id IS NULL) <> (topic IS NULL)) NOT VALID;

ALTER TABLE delivery DROP CONSTRAINT delivery_status_check;
ALTER TABLE delivery ADD CONSTRAINT delivery_status_check
    CHECK (status IN ('queued', 'retrying', 'delivered', 'failed', 'expired')) NOT VALID;

-- Who listens to a topic. New and empty: built in the transaction at no cost.
CREATE TABLE topic_subscription (
    topic      text NOT NULL,
    user_id    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, user_id)
);
-- `GET /users/{user_id}/topics` and erasing a user.
CREATE INDEX topic_subscription_user_idx ON topic_subscription (user_id, topic);

-- A row inserted with a future send_at waits as `scheduled` (the scheduler makes it `pending`
-- when it is due, see notification_scheduled_idx), so that the pending index, and with it the
-- listener's claim, never holds a future row.
CREATE FUNCTION notification_schedule_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'pending' AND NEW.send_at > now() THEN
        NEW.status := 'scheduled';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER notification_insert_schedule
    BEFORE INSERT ON notification
    FOR EACH ROW WHEN (NEW.send_at IS NOT NULL)
    EXECUTE FUNCTION notification_schedule_insert();

-- The doorbell rings for rows the listener can claim now: not for scheduled rows (nothing to do
-- until they are due) nor for the rows the relay itself writes for a topic's subscribers (the
-- listener that writes them drains them next).
DROP TRIGGER notification_insert_notify ON notification;
CREATE TRIGGER notification_insert_notify
    AFTER INSERT ON notification
    FOR EACH ROW WHEN (NEW.status = 'pending' AND NEW.parent_id IS NULL)
    EXECUTE FUNCTION notification_notify_insert();

-- The orphan rule of V3 with the new final state: a notification none of whose remaining
-- targets was delivered is `expired` when one of them expired (it would not be delivered now
-- anyway, and it is not a failure of the user's: no notification_failed row), else `failed`.
CREATE OR REPLACE FUNCTION delivery_settle_orphans() RETURNS trigger
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
               coalesce(bool_or(d.status = 'expired'), false) AS expired,
               max(d.delivered_at) AS delivered_at,
               string_agg(DISTINCT d.last_error, '; ') FILTER (WHERE d.status IN ('failed', 'expired')) AS errors
          FROM orphaned o LEFT JOIN delivery d ON d.notification_id = o.id
         GROUP BY o.id
    ), done AS (
        UPDATE notification n
           SET status = CASE WHEN agg.delivered THEN 'delivered' WHEN agg.expired THEN 'expired' ELSE 'failed' END,
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
