-- notify-relay schema. Producers only ever INSERT INTO notification; everything else is the
-- relay's. See DESIGN.md §3 for the status rule.

CREATE TABLE notification (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id       text NOT NULL,
    type          text NOT NULL,
    channel       text,
    payload       jsonb NOT NULL DEFAULT '{}',
    priority      text NOT NULL DEFAULT 'normal',
    trace_id      text,
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'queued', 'retrying', 'delivered', 'failed')),
    attempt_count int  NOT NULL DEFAULT 0,
    last_error    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    queued_at     timestamptz,
    delivered_at  timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- The listener's claim: oldest pending first, index-only on a small partial index.
CREATE INDEX notification_pending_idx ON notification (created_at) WHERE status = 'pending';

CREATE TABLE device (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id         text NOT NULL,
    provider        text NOT NULL,
    token           text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at    timestamptz,
    disabled_at     timestamptz,
    disabled_reason text,
    UNIQUE (provider, token)
);

-- Fan-out: a user's active devices.
CREATE INDEX device_user_active_idx ON device (user_id) INCLUDE (provider, token) WHERE disabled_at IS NULL;

CREATE TABLE notification_failed (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    notification_id uuid NOT NULL REFERENCES notification (id),
    user_id         text NOT NULL,
    error           text NOT NULL,
    attempt_count   int  NOT NULL,
    payload         jsonb NOT NULL,
    failed_at       timestamptz NOT NULL DEFAULT now(),
    retried_at      timestamptz
);

-- The pull API: a user's failures, newest first, keyset-paginated.
CREATE INDEX notification_failed_user_idx ON notification_failed (user_id, failed_at DESC, id DESC);
CREATE INDEX notification_failed_notification_idx ON notification_failed (notification_id);

-- One row per target (notification × device): its attempts, outcome and provider message id.
-- Keyed by the pair itself, so that every write touches one unique index and the partial one.
CREATE TABLE delivery (
    notification_id     uuid NOT NULL REFERENCES notification (id) ON DELETE CASCADE,
    device_id           uuid NOT NULL REFERENCES device (id) ON DELETE CASCADE,
    provider            text NOT NULL,
    status              text NOT NULL DEFAULT 'queued'
                        CHECK (status IN ('queued', 'retrying', 'delivered', 'failed')),
    attempt_count       int  NOT NULL DEFAULT 0,
    last_error          text,
    provider_message_id text,
    next_attempt_at     timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    delivered_at        timestamptz,
    PRIMARY KEY (notification_id, device_id)
);

-- The sweep: targets that made no progress for a while.
CREATE INDEX delivery_in_flight_idx ON delivery (updated_at) WHERE status IN ('queued', 'retrying');

-- The doorbell. LISTEN needs a direct or session-mode connection (Supabase: port 5432).
CREATE FUNCTION notification_notify_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('notification_insert', NEW.id::text);
    RETURN NEW;
END
$$;

CREATE TRIGGER notification_insert_notify
    AFTER INSERT ON notification
    FOR EACH ROW EXECUTE FUNCTION notification_notify_insert();
