-- The write path, kept flat as the tables grow to tens of millions of rows (issue 14).
--
-- Time-ordered notification ids. gen_random_uuid() scatters every insert over the whole primary
-- key of `notification` and of `delivery` (whose key starts with the notification's id): once
-- those indexes outgrow memory each insert reads and dirties a random leaf page, and the first
-- change to a page after every checkpoint writes the whole 8 kB page to the WAL again. A UUIDv7
-- (RFC 9562: 48 bits of Unix milliseconds, then 74 random bits) puts new ids at the right edge
-- of both indexes, where the pages are in memory and already in the WAL. Ids remain
-- unguessable enough for what they are used for (they are not secrets: every route checks the
-- user), and they tell the creation time to the millisecond, as created_at does.
-- PostgreSQL 18 has uuidv7(); this is the same layout for 15 to 17.
--
-- Room for the updates. A claimed notification is updated twice (queued, then its outcome) and
-- a delivery row once or twice; an update that cannot stay on its page moves the row to another
-- one and dirties both. fillfactor leaves a sixth of each new page free for those new row
-- versions (existing pages are not rewritten: this is catalog-only).
--
-- Catalog-only, safe on a live table: SET DEFAULT and the storage parameters need the table's
-- lock for an instant; lock_timeout fails the migration instead of queueing every producer's
-- insert behind a long transaction, and the next start tries again.
SET LOCAL lock_timeout = '5s';

CREATE FUNCTION notification_uuid_v7() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    -- The first 6 bytes of a random (v4) uuid replaced by the time in ms, big-endian; bits 52
    -- and 53 turn the version nibble from 4 (0100) into 7 (0111). The variant bits stay RFC 4122.
    SELECT encode(
               set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
                                       PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::int8) FROM 3)
                                       FROM 1 FOR 6),
                               52, 1),
                       53, 1),
               'hex')::uuid
$$;

ALTER TABLE notification ALTER COLUMN id SET DEFAULT notification_uuid_v7();
ALTER TABLE notification SET (fillfactor = 85);
ALTER TABLE delivery SET (fillfactor = 85);
