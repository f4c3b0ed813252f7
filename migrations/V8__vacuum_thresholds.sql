-- Vacuum the relay's two busy tables by the rows they churn, not by their size (issue 14).
--
-- Every notification leaves two dead versions of its `notification` row (queued, then its
-- outcome) and one of each `delivery` row; retention deletes a month of both every day. With the
-- server's defaults autovacuum waits for 20 % of a table to be dead: on a table of 30 million
-- rows that is 6 million dead versions, whose pages every claim, outcome and index probe then
-- reads through, and the tables grow by that much before anything is reused. 2 % vacuums every
-- few hundred thousand notifications instead, each run short; the insert threshold does the same
-- for a table that only grows (a backlog scheduled for later), keeping its visibility map set.
-- Only the autovacuum daemon reads these (a server with autovacuum off ignores them); a DBA can
-- override them with ALTER TABLE … SET or RESET.
--
-- Catalog-only, safe on a live table (see V7 for the lock_timeout).
SET LOCAL lock_timeout = '5s';

ALTER TABLE notification SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02,
                              autovacuum_analyze_scale_factor = 0.05);
ALTER TABLE delivery SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02,
                          autovacuum_analyze_scale_factor = 0.05);
