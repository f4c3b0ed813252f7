-- notify-relay: the least-privilege role the running relay connects as.
--
-- NOT a migration: `notify-relay migrate` never runs this file (refinery only reads V*__*.sql in
-- migrations/). Migrations run as the role that owns the schema (it creates tables and indexes,
-- and builds indexes CONCURRENTLY); the relay itself (`notify-relay run --no-migrate`, the admin
-- commands) needs only what is granted here. Apply it by hand, as that owning role, after
-- `notify-relay migrate`:
--
--     psql "$OWNER_DATABASE_URL" -v ON_ERROR_STOP=1 -f migrations/optional/runtime_role.sql
--
-- It creates the NOLOGIN role `notify_relay` if it is missing and grants it exactly what the relay
-- runs. Log in through a role of your own that is a member of it (two such roles let a password
-- be rotated without downtime), or make it a login role itself:
--
--     CREATE ROLE notify_relay_app LOGIN PASSWORD '…' IN ROLE notify_relay;
--     -- or: ALTER ROLE notify_relay LOGIN PASSWORD '…';
--
-- It is idempotent: apply it again after every upgrade of notify-relay, right after `notify-relay
-- migrate` and before the new relay starts. No default privileges are set on purpose: a table a
-- later migration adds gets no grant until this file (shipped with that migration) says which one
-- it needs, so the role never holds more than the code of its version uses. Running a new relay
-- before re-applying this file fails loudly (permission denied, /readyz 503), never silently.
--
-- How the list was made: every statement the engine and the API run (actors/src/store/*.rs,
-- src/migrate.rs `is_current`, the listener's LISTEN, the triggers of migrations/V*.sql, which run
-- with the privileges of the relay's statements that fire them). tests/relay/least_privilege.rs
-- runs every role of the relay, the API and the admin commands as a member of this role and fails
-- when a grant below is missing; it also checks that the role cannot change the schema.
--
-- On a database with row-level security on these tables (migrations/optional/supabase_rls.sql),
-- the login role also needs BYPASSRLS (an attribute, not inherited through membership): the
-- policies there are for app users, not for the relay, which must see every row.

BEGIN;

-- The role. Concurrent applications of this file (replicas, tests) may race to create it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'notify_relay') THEN
        CREATE ROLE notify_relay NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

-- Start from nothing in this database, so that re-applying the file after an upgrade also takes
-- back what a newer version no longer needs.
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM notify_relay;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM notify_relay;
REVOKE ALL ON SCHEMA public FROM notify_relay;

-- Connecting to this database (PUBLIC has CONNECT by default; an operator who revoked it from
-- PUBLIC still lets the relay in).
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO notify_relay', current_database());
END
$$;

-- Looking up the tables by name. USAGE only: creating objects in the schema is the owner's.
GRANT USAGE ON SCHEMA public TO notify_relay;
-- Before PostgreSQL 15 every role may CREATE in `public` through PUBLIC, which a grant to this
-- role alone cannot take back. This is what PostgreSQL 15 does by default; it also stops other
-- non-owner roles from creating tables in `public`.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- notification
--   SELECT: the listener's claim and fan-out (fanout.rs), the sweep (sweep.rs), the scheduler's
--           probe (schedule.rs), topics (topics.rs), the API's status, cancel and retry
--           (api.rs), retention (retention.rs), and the row locks (FOR UPDATE) of each.
--   INSERT: a topic notification's one row per subscriber (topics.rs), only the columns it
--           writes; the rest take their defaults.
--   UPDATE: the status columns only, never who a notification is for or what it says:
--           status, attempt_count, last_error, the timestamps, trace_id (generated at fan-out
--           when the producer gave none) and fanout_cursor (a topic's progress).
--   DELETE: retention of final rows (retention.rs).
GRANT SELECT, DELETE ON notification TO notify_relay;
GRANT INSERT (user_id, type, channel, payload, priority, trace_id, expires_at, collapse_key, parent_id, queued_at)
    ON notification TO notify_relay;
GRANT UPDATE (status, attempt_count, last_error, queued_at, delivered_at, updated_at, trace_id, fanout_cursor)
    ON notification TO notify_relay;

-- delivery (one row per target)
--   SELECT: screening before every send (targets.rs), the sweep, receipts, the API's targets.
--   INSERT: fan-out writes one row per target (fanout.rs).
--   UPDATE: outcomes, retries, receipts, requeues: every column but the key and the provider.
--   DELETE: a retry through the API starts the notification over (api.rs).
GRANT SELECT, DELETE ON delivery TO notify_relay;
GRANT INSERT (notification_id, device_id, provider, status, last_error) ON delivery TO notify_relay;
GRANT UPDATE (status, attempt_count, last_error, provider_message_id, next_attempt_at, created_at, updated_at,
              delivered_at, receipt_due_at, receipt_leased_until)
    ON delivery TO notify_relay;

-- device
--   SELECT: fan-out to a user's active devices, screening, the API.
--   INSERT: POST /users/{id}/devices registers (user_id, provider, token); the rest are defaults.
--   UPDATE: disabling (dead tokens, DELETE through the API), re-enabling, moving a push token to
--           its new owner (user_id), last_used_at. Never the token or the provider, so a device
--           row cannot be re-pointed at someone else's phone.
--   No DELETE: the relay disables devices, it never deletes them (delivery history keeps them).
GRANT SELECT ON device TO notify_relay;
GRANT INSERT (user_id, provider, token) ON device TO notify_relay;
GRANT UPDATE (user_id, disabled_at, disabled_reason, last_used_at) ON device TO notify_relay;

-- notification_failed (what users pull)
--   SELECT: the pull API; INSERT: a failed notification's row (fan-out, outcomes, and the
--   orphan trigger of V3/V5, which runs as the relay's DELETE that fires it); UPDATE: retried_at
--   when retried; DELETE: the row of a failure a late delivery undid (outcomes.rs), retention.
GRANT SELECT, DELETE ON notification_failed TO notify_relay;
GRANT INSERT (notification_id, user_id, error, attempt_count, payload) ON notification_failed TO notify_relay;
GRANT UPDATE (retried_at) ON notification_failed TO notify_relay;

-- topic_subscription
--   SELECT: the topic fan-out and the API; INSERT/DELETE: subscribe and unsubscribe through the
--   API; UPDATE (topic): the subscribe upsert's `ON CONFLICT … DO UPDATE SET topic = …`, which
--   Postgres checks on every such insert, conflicting or not (it writes the same value).
GRANT SELECT, DELETE ON topic_subscription TO notify_relay;
GRANT INSERT (topic, user_id) ON topic_subscription TO notify_relay;
GRANT UPDATE (topic) ON topic_subscription TO notify_relay;

-- refinery_schema_history
--   SELECT: /readyz answers 200 only when the database has every migration of this binary
--   (src/migrate.rs `is_current`). Writing it is the migration role's.
GRANT SELECT ON refinery_schema_history TO notify_relay;

-- Nothing else is granted, and nothing else is needed:
-- - Sequences: none. Every key is a uuid (gen_random_uuid()), refinery's table has no serial.
-- - Functions: the relay calls only built-ins that PUBLIC may EXECUTE (pg_notify, gen_random_uuid,
--   pg_advisory_xact_lock, hashtext, to_regclass, unnest). The trigger functions of the
--   migrations run when the relay's statements fire them; Postgres checks EXECUTE on a trigger
--   function when the trigger is created (by the owner), not when it fires.
-- - LISTEN notification_insert needs no privilege; the pg_index lookup of `is_current` reads a
--   catalog every role can read.
-- - Foreign keys (delivery → notification, device; notification_failed → notification) are
--   checked, and ON DELETE CASCADE carried out, by Postgres as the tables' owner.
-- - TEMPORARY: the relay creates no temporary tables. PUBLIC holds TEMPORARY on every database
--   by default; `REVOKE TEMPORARY ON DATABASE … FROM PUBLIC` takes it from every role, if you want.

COMMIT;
