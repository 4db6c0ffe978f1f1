-- chatcluster schema for SQLite (embedded default). Each migration starts
-- with a "-- migration N" line; statements end with ";" at end of line.
-- migration 1
CREATE TABLE IF NOT EXISTS users (
  id            INTEGER PRIMARY KEY AUTOINCREMENT,
  name          TEXT    NOT NULL UNIQUE,
  password      BLOB    NOT NULL,
  token_version INTEGER NOT NULL DEFAULT 0,
  created_ms    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS friends (
  userid     INTEGER NOT NULL,
  friendid   INTEGER NOT NULL,
  created_ms INTEGER NOT NULL,
  PRIMARY KEY (userid, friendid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chat_groups (
  id         INTEGER PRIMARY KEY AUTOINCREMENT,
  groupname  TEXT    NOT NULL UNIQUE,
  groupdesc  TEXT    NOT NULL,
  creator    INTEGER NOT NULL,
  created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS group_members (
  groupid   INTEGER NOT NULL,
  userid    INTEGER NOT NULL,
  role      TEXT    NOT NULL,
  joined_ms INTEGER NOT NULL,
  PRIMARY KEY (groupid, userid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS group_members_user ON group_members (userid);
CREATE TABLE IF NOT EXISTS inbox_state (
  userid    INTEGER PRIMARY KEY,
  last_seq  INTEGER NOT NULL DEFAULT 0,
  acked_seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS inbox (
  userid     INTEGER NOT NULL,
  seq        INTEGER NOT NULL,
  kind       INTEGER NOT NULL,
  fromid     INTEGER NOT NULL,
  fromname   TEXT    NOT NULL,
  toid       INTEGER NOT NULL,
  groupid    INTEGER NOT NULL,
  body       TEXT    NOT NULL,
  created_ms INTEGER NOT NULL,
  PRIMARY KEY (userid, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sent (
  senderid    INTEGER NOT NULL,
  clientmsgid TEXT    NOT NULL,
  created_ms  INTEGER NOT NULL,
  PRIMARY KEY (senderid, clientmsgid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS settings (
  name  TEXT PRIMARY KEY,
  value BLOB NOT NULL
);
-- migration 2
-- Group messages are stored once, in a per-group log; each member has a
-- position in it (the highest gseq acknowledged).
CREATE TABLE IF NOT EXISTS group_state (
  groupid  INTEGER PRIMARY KEY,
  last_seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS group_log (
  groupid    INTEGER NOT NULL,
  seq        INTEGER NOT NULL,
  fromid     INTEGER NOT NULL,
  fromname   TEXT    NOT NULL,
  body       TEXT    NOT NULL,
  created_ms INTEGER NOT NULL,
  PRIMARY KEY (groupid, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS member_state (
  userid    INTEGER NOT NULL,
  groupid   INTEGER NOT NULL,
  acked_seq INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (userid, groupid)
) WITHOUT ROWID;
-- migration 3
-- One-to-one messages and dedup keys are appended to a log table first
-- (rowid order: a commit dirties few pages); a full log is frozen, merged
-- into inbox or sent a key range per commit, then emptied, while its twin
-- takes the new rows. See store/sqlite_log.go. A row can be in a log and in
-- its table for a while; readers take the union.
CREATE TABLE IF NOT EXISTS inbox_log0 (
  userid     INTEGER NOT NULL,
  seq        INTEGER NOT NULL,
  kind       INTEGER NOT NULL,
  fromid     INTEGER NOT NULL,
  fromname   TEXT    NOT NULL,
  toid       INTEGER NOT NULL,
  groupid    INTEGER NOT NULL,
  body       TEXT    NOT NULL,
  created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS inbox_log0_user ON inbox_log0 (userid, seq);
CREATE TABLE IF NOT EXISTS inbox_log1 (
  userid     INTEGER NOT NULL,
  seq        INTEGER NOT NULL,
  kind       INTEGER NOT NULL,
  fromid     INTEGER NOT NULL,
  fromname   TEXT    NOT NULL,
  toid       INTEGER NOT NULL,
  groupid    INTEGER NOT NULL,
  body       TEXT    NOT NULL,
  created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS inbox_log1_user ON inbox_log1 (userid, seq);
CREATE TABLE IF NOT EXISTS sent_log0 (
  senderid    INTEGER NOT NULL,
  clientmsgid TEXT    NOT NULL,
  created_ms  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sent_log0_key ON sent_log0 (senderid, clientmsgid);
CREATE TABLE IF NOT EXISTS sent_log1 (
  senderid    INTEGER NOT NULL,
  clientmsgid TEXT    NOT NULL,
  created_ms  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sent_log1_key ON sent_log1 (senderid, clientmsgid);
-- Where each log pair is (store/sqlite_log.go mergeState), changed only
-- inside the commits' transactions.
CREATE TABLE IF NOT EXISTS log_state (
  name        TEXT    PRIMARY KEY,
  active      INTEGER NOT NULL DEFAULT 0,
  rows        INTEGER NOT NULL DEFAULT 0,
  merging     INTEGER NOT NULL DEFAULT 0,
  from_key    INTEGER NOT NULL DEFAULT 0,
  switched_ms INTEGER NOT NULL DEFAULT 0
);
INSERT OR IGNORE INTO log_state (name) VALUES ('inbox_log');
INSERT OR IGNORE INTO log_state (name) VALUES ('sent_log');
-- migration 4
-- The sent logs lose their key index: the writer keeps their keys in
-- memory (store/sqlite_sent.go), and an index took a random leaf page per
-- appended key. log_state.gen changes with every change to a pair's logs,
-- so the writer can tell whether its copy is still theirs.
DROP INDEX IF EXISTS sent_log0_key;
DROP INDEX IF EXISTS sent_log1_key;
ALTER TABLE log_state ADD COLUMN gen INTEGER NOT NULL DEFAULT 0;
-- migration 5
-- A frozen log is copied in ranges that may end inside a user's rows
-- (store/sqlite_log.go logPos): where the next range starts within the
-- rows of user from_sub_key.
ALTER TABLE log_state ADD COLUMN from_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE log_state ADD COLUMN from_cmid TEXT NOT NULL DEFAULT '';
ALTER TABLE log_state ADD COLUMN from_sub_key INTEGER NOT NULL DEFAULT 0;
-- migration 6
-- Each group's member count, kept by the transactions that add members
-- (CREATE_GROUP, ADD_GROUP): LOGIN_ACK reports it and the members cap is
-- checked against it (a conditional update) without counting the members.
ALTER TABLE chat_groups ADD COLUMN members INTEGER NOT NULL DEFAULT 0;
UPDATE chat_groups SET members = (SELECT COUNT(*) FROM group_members m WHERE m.groupid = chat_groups.id);
