-- One notification per transaction, as a producer committing single rows (bench/doorbell/run.sh).
INSERT INTO notification (user_id, type, payload) VALUES ('u' || :client_id, 'bench', '{"title": "t"}');
