-- chorus durable history, PostgreSQL schema.
--
-- Every key column is TEXT COLLATE "C": keys are opaque byte strings (tenant-
-- namespaced room and user ids), so they compare by bytes, which is cheaper
-- than a linguistic collation, does not depend on the database's locale, and
-- gives the same order as the SQLite backend (`memberships` is ordered by room).

-- One row per room that has ever been claimed. `epoch` fences stale writers:
-- every append locks this row (FOR UPDATE) and compares it in the same
-- transaction. `last_seq` is the highest seq ever committed and never goes
-- back, even when retention deletes the messages themselves (seqs are never
-- reused).
CREATE TABLE rooms (
    room       TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    epoch      BIGINT NOT NULL,
    last_seq   BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Committed messages. `body` and `meta` are raw JSON text, stored verbatim as
-- TEXT (not JSONB, which would reorder keys and rewrite numbers and escapes).
-- The primary key is the per-room total order; the UNIQUE constraint is the
-- idempotency key: a client retry with the same (sender, cid) resolves to the
-- original row instead of a second copy. Both are the last line of defence
-- behind the writer's own checks.
CREATE TABLE messages (
    room   TEXT COLLATE "C" NOT NULL,
    seq    BIGINT NOT NULL,
    id     TEXT NOT NULL,
    sender TEXT COLLATE "C" NOT NULL,
    cid    TEXT COLLATE "C" NOT NULL,
    body   TEXT NOT NULL,
    meta   TEXT,
    ts     BIGINT NOT NULL,
    PRIMARY KEY (room, seq),
    UNIQUE (room, sender, cid)
);

-- Retention by age deletes `ts < cutoff` across all rooms.
CREATE INDEX messages_ts ON messages (ts);

-- Durable memberships with per-member delivery and read positions (seqs).
-- The column is `user_id`, not `user`: `user` is a reserved word in
-- PostgreSQL, and an unquoted `SELECT user FROM members` silently returns the
-- session's role name for every row.
CREATE TABLE members (
    room           TEXT COLLATE "C" NOT NULL,
    user_id        TEXT COLLATE "C" NOT NULL,
    joined_at      BIGINT NOT NULL,
    last_delivered BIGINT NOT NULL,
    last_read      BIGINT NOT NULL,
    PRIMARY KEY (room, user_id)
);

-- `memberships(user)`: the index holds (user_id, room), so it also yields the
-- rows already ordered by room.
CREATE INDEX members_user ON members (user_id, room);
