-- chorus durable history, SQLite schema.
--
-- Every table is WITHOUT ROWID so rows are clustered by their primary key:
-- a room's messages sit next to each other in (room, seq) order, which makes
-- range reads and the per-room tail lookups of `append` touch few pages.
-- Chat rows are small, which is the case WITHOUT ROWID is designed for.

-- One row per room that has ever been claimed. `epoch` fences stale writers;
-- `last_seq` is the highest seq ever committed and never goes back, even when
-- retention deletes the messages themselves (seqs are never reused).
CREATE TABLE rooms (
    room       TEXT    NOT NULL PRIMARY KEY,
    epoch      INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL,
    created_at INTEGER
) WITHOUT ROWID;

-- Committed messages. `body` and `meta` are raw JSON text, stored verbatim.
-- The UNIQUE constraint is the idempotency key: a client retry with the same
-- (sender, cid) resolves to the original row instead of a second copy.
CREATE TABLE messages (
    room   TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    id     TEXT    NOT NULL,
    sender TEXT    NOT NULL,
    cid    TEXT    NOT NULL,
    body   TEXT    NOT NULL,
    meta   TEXT,
    ts     INTEGER NOT NULL,
    PRIMARY KEY (room, seq),
    UNIQUE (room, sender, cid)
) WITHOUT ROWID;

-- Retention by age deletes `ts < cutoff` across all rooms.
CREATE INDEX messages_ts ON messages (ts);

-- Durable memberships with per-member delivery and read positions (seqs).
CREATE TABLE members (
    room           TEXT    NOT NULL,
    user           TEXT    NOT NULL,
    joined_at      INTEGER NOT NULL,
    last_delivered INTEGER NOT NULL,
    last_read      INTEGER NOT NULL,
    PRIMARY KEY (room, user)
) WITHOUT ROWID;

-- `memberships(user)`: the index holds (user, room), so it also yields the
-- rows already ordered by room.
CREATE INDEX members_user ON members (user);
