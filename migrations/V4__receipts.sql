-- Expo receipts are bookkept in Postgres, next to the ticket they belong to
-- (`provider_message_id`): a Redis flush or a crash of the poller cannot lose them.
-- receipt_due_at: when the receipt is to be asked for next; NULL = nothing to ask (not Expo,
-- receipt answered, or older than Expo keeps receipts). The poller leases due rows by pushing it
-- forward, so a poller that dies with a lease only delays its receipts.
--
-- Adding a nullable column without a default only touches the catalog. The index starts empty
-- (every row is NULL) but is built with a table scan under a SHARE lock: refinery runs each
-- migration in a transaction, where CREATE INDEX CONCURRENTLY is not allowed.
ALTER TABLE delivery ADD COLUMN receipt_due_at timestamptz;

-- The poller's lease: due receipts, oldest first; only rows with a receipt to ask for.
CREATE INDEX delivery_receipt_due_idx ON delivery (receipt_due_at) WHERE receipt_due_at IS NOT NULL;
