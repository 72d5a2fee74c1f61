-- The change feed and the study-stability timer (issue 3, ARCHITECTURE.md "Events").
--
-- Why the outbox's position is no longer its identity: an identity value is taken when a row is
-- inserted, but rows become visible when their transactions commit, in another order. A
-- subscriber that had read up to 12 could later miss a row 11 that committed after 12. So rows
-- get their change-feed `sequence` from the relay, which numbers committed rows under one lock
-- (outbox_position), in commit-visible order: the feed only ever grows at its end.

ALTER TABLE outbox RENAME COLUMN sequence TO pk;
ALTER TABLE outbox ADD COLUMN sequence bigint UNIQUE;
-- The event's own identity (ce-id) and time (ce-time), fixed when the row is written so that a
-- re-publish after a crash carries the same id and subscribers can de-duplicate.
ALTER TABLE outbox ADD COLUMN event_id uuid NOT NULL DEFAULT gen_random_uuid();
ALTER TABLE outbox ADD COLUMN event_time timestamptz NOT NULL DEFAULT now();

DROP INDEX IF EXISTS outbox_unpublished_idx;
CREATE INDEX outbox_unsequenced_idx ON outbox (pk) WHERE sequence IS NULL;
CREATE INDEX outbox_unpublished_idx ON outbox (sequence)
    WHERE published_at IS NULL AND sequence IS NOT NULL;

CREATE TABLE outbox_position (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_sequence  bigint NOT NULL
);
INSERT INTO outbox_position (singleton, last_sequence) VALUES (true, 0);

-- What the last announcement said, so study.updated can say what changed since:
-- {"series": {"<uid>": {"instances": n, "bytes": b, "digest": "<md5>"}}, "instances": n,
--  "bytes": b}; and which outbox row carried it (its sequence is the previous_sequence).
ALTER TABLE study ADD COLUMN announced_summary jsonb;
ALTER TABLE study ADD COLUMN announced_outbox_pk bigint;
ALTER TABLE study ADD COLUMN replaced_since_announce integer NOT NULL DEFAULT 0;
ALTER TABLE study DROP COLUMN announced_sequence;
-- W3C trace context of the latest instance that moved the timer: the study's announcement
-- continues the trace that delivered its last instance.
ALTER TABLE study ADD COLUMN trace_context jsonb NOT NULL DEFAULT '{}'::jsonb;
