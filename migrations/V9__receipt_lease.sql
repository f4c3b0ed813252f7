-- The receipt poller's lease in a column of its own (issue 14).
--
-- The poller used to lease due receipts by pushing `receipt_due_at` forward. That column is the
-- key of `delivery_receipt_due_idx`, so every lease was an update PostgreSQL cannot do HOT: a new
-- row version with a new entry in the primary key and in the receipt index, for every Expo
-- delivery, once more after the outcome and before the receipt's own update. A lease that only
-- sets `receipt_leased_until`, which no index names, stays on the row's page (fillfactor 85, V7)
-- and touches no index. The poller skips rows whose lease has not run out; the receipt's own
-- update clears it. Nullable and without a default: a catalog-only change, safe on a live table.
SET LOCAL lock_timeout = '5s';

ALTER TABLE delivery ADD COLUMN receipt_leased_until timestamptz;

-- A server set up with migrations/optional/runtime_role.sql before this column existed: its
-- runtime role gets the lease's column too (the script grants it on a fresh set-up), or the
-- receipt poller of the upgraded relay would be refused.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'notify_relay') THEN
        GRANT UPDATE (receipt_leased_until) ON delivery TO notify_relay;
    END IF;
END
$$;
