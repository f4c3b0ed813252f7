-- The retention job deletes final notifications by age. created_at only grows, so a BRIN index
-- finds old rows for a few kilobytes and costs the insert path next to nothing.
CREATE INDEX notification_created_brin ON notification USING brin (created_at);
