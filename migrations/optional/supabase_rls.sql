-- notify-relay on Supabase: row-level security so that an app, signed in with supabase-js (the
-- `authenticated` role, `auth.uid()` = the user's id), can register and remove its own devices,
-- subscribe to topics, and read its own notifications and failures, and nothing of anyone else's.
--
-- NOT a migration: `notify-relay migrate` never runs this file (refinery only reads V*__*.sql in
-- migrations/). An operator applies it by hand, after `notify-relay migrate`, as the role that ran
-- the migrations (on Supabase: `postgres`), with psql or the dashboard's SQL editor:
--
--     psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f migrations/optional/supabase_rls.sql
--
-- It is idempotent: apply it again after every upgrade of notify-relay. A later migration that
-- replaces a function (CREATE OR REPLACE) resets the SECURITY DEFINER set at the end, and a new
-- table gets Supabase's default grants to anon and authenticated until this file revokes them.
--
-- The relay itself is not affected: it connects as the owner of these tables (the role that ran
-- the migrations), and a table's owner bypasses its policies (no FORCE ROW LEVEL SECURITY here).
-- A relay connecting as another role needs BYPASSRLS. See docs/supabase.md.
--
-- Requires what Supabase defines: the roles `anon` and `authenticated` and `auth.uid()`.
-- RLS needs both halves: a GRANT lets a role touch a table at all, a policy picks the rows.

BEGIN;

-- Supabase's default privileges grant ALL on every new table in `public` to anon and
-- authenticated, which PostgREST then serves to anyone holding the project's anon key. Take it all
-- back first, then grant exactly what the policies below need.
REVOKE ALL ON notification, device, notification_failed, delivery, topic_subscription, refinery_schema_history
    FROM anon, authenticated;

-- Every table, even those no policy opens: with RLS on and no policy, a grant added by mistake
-- later still shows no row.
ALTER TABLE notification            ENABLE ROW LEVEL SECURITY;
ALTER TABLE device                  ENABLE ROW LEVEL SECURITY;
ALTER TABLE notification_failed     ENABLE ROW LEVEL SECURITY;
ALTER TABLE delivery                ENABLE ROW LEVEL SECURITY;
ALTER TABLE topic_subscription      ENABLE ROW LEVEL SECURITY;
ALTER TABLE refinery_schema_history ENABLE ROW LEVEL SECURITY;

-- Devices: read, register (three columns only: id, timestamps and the disabled_* columns are the
-- relay's), delete. No UPDATE: a token is never re-pointed by the app, so that it cannot take
-- over another user's device.
GRANT SELECT, DELETE ON device TO authenticated;
GRANT INSERT (user_id, provider, token) ON device TO authenticated;

-- Notifications and failures: read only. Producers insert notifications with the service role or
-- from SQL (the README's "For producers"); the relay alone updates them.
GRANT SELECT ON notification, notification_failed TO authenticated;

-- Topic subscriptions: read, subscribe, unsubscribe.
GRANT SELECT, DELETE ON topic_subscription TO authenticated;
GRANT INSERT (topic, user_id) ON topic_subscription TO authenticated;

-- `(select auth.uid())` rather than `auth.uid()`: Postgres evaluates it once per statement (an
-- InitPlan) instead of once per row, which keeps the index on user_id usable.

-- The caps below count the caller's own rows. A policy of a table cannot query that table itself
-- (Postgres refuses the recursion), so these count as their owner, and only the caller's rows:
-- called through PostgREST (`rpc`), they tell a user nothing they cannot read already. Their
-- search_path is pinned at the end of the file.
CREATE OR REPLACE FUNCTION notify_relay_own_active_devices() RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER AS $f$
    SELECT count(*) FROM device WHERE user_id = (select auth.uid())::text AND disabled_at IS NULL
$f$;
CREATE OR REPLACE FUNCTION notify_relay_own_topics() RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER AS $f$
    SELECT count(*) FROM topic_subscription WHERE user_id = (select auth.uid())::text
$f$;
REVOKE ALL ON FUNCTION notify_relay_own_active_devices(), notify_relay_own_topics() FROM PUBLIC, anon;
GRANT EXECUTE ON FUNCTION notify_relay_own_active_devices(), notify_relay_own_topics() TO authenticated;

-- Reading and deleting: the caller's own rows, one policy `<table>_<command>_own` per pair below.
DO $$
DECLARE
    own record;
    policy text;
BEGIN
    FOR own IN SELECT * FROM (VALUES ('device', 'SELECT'), ('device', 'DELETE'), ('notification', 'SELECT'),
                                     ('notification_failed', 'SELECT'), ('topic_subscription', 'SELECT'),
                                     ('topic_subscription', 'DELETE')) AS pairs (tbl, command)
    LOOP
        policy := format('%s_%s_own', own.tbl, lower(own.command));
        EXECUTE format('DROP POLICY IF EXISTS %I ON %I', policy, own.tbl);
        EXECUTE format('CREATE POLICY %I ON %I FOR %s TO authenticated USING (user_id = (select auth.uid())::text)',
                       policy, own.tbl, own.command);
    END LOOP;
END
$$;

-- Registering checks what the relay's POST /users/{id}/devices checks that SQL can: the token's
-- shape for its provider (as src/routes/devices.rs) and the per-user cap of active devices (keep
-- 100 equal to `devices.max_per_user`; two inserts racing can both pass it, which bounds the
-- overshoot by the user's own concurrency). Email devices are left to the API, which checks the
-- address against the token's `email` claim: here a user could name anyone's address.
DROP POLICY IF EXISTS device_insert_own ON device;
CREATE POLICY device_insert_own ON device FOR INSERT TO authenticated
    WITH CHECK (
        user_id = (select auth.uid())::text
        AND char_length(token) <= 4096
        AND CASE provider
                WHEN 'expo' THEN token ~ '^Expo(nent)?PushToken\[[!-~]*\]$'
                WHEN 'fcm'  THEN token ~ '^[!-~]+$'
                WHEN 'apns' THEN token ~ '^([0-9A-Fa-f]{2}){32,}$'
                ELSE false
            END
        AND notify_relay_own_active_devices() < 100
    );

-- The topic rule of PUT /users/{id}/topics/{topic}, and `topics.max_per_user` (1000).
DROP POLICY IF EXISTS topic_subscription_insert_own ON topic_subscription;
CREATE POLICY topic_subscription_insert_own ON topic_subscription FOR INSERT TO authenticated
    WITH CHECK (
        user_id = (select auth.uid())::text
        AND topic ~ '^[A-Za-z0-9_.~:-]+$' AND octet_length(topic) <= 256
        -- Not only dots: `.` and `..` are path segments an HTTP client resolves away.
        AND topic !~ '^\.+$'
        AND notify_relay_own_topics() < 1000
    );

-- Deleting a device deletes its delivery rows (ON DELETE CASCADE, done as the table's owner), and
-- the statement trigger on delivery then settles the notifications left without an open target
-- (V3, V5). That trigger runs as whoever deleted the device: as `authenticated` it could neither
-- see nor update those notifications, and they would stay queued for good. SECURITY DEFINER runs
-- it as its owner. The function only acts on the rows the delete removed, and a trigger function
-- cannot be called directly.
--
-- Every SECURITY DEFINER function here gets a fixed search_path (the schema the relay's tables
-- are in, where this file runs), so that a caller's search_path cannot redirect it.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION %I.delivery_settle_orphans() SECURITY DEFINER SET search_path = %I, pg_temp',
                   current_schema(), current_schema());
    EXECUTE format('ALTER FUNCTION %I.notify_relay_own_active_devices() SET search_path = %I, pg_temp',
                   current_schema(), current_schema());
    EXECUTE format('ALTER FUNCTION %I.notify_relay_own_topics() SET search_path = %I, pg_temp',
                   current_schema(), current_schema());
END
$$;

COMMIT;
