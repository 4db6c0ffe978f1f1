-- chatcluster schema for MySQL / MariaDB (InnoDB, utf8mb4). Each migration
-- starts with a "-- migration N" line; statements end with ";" at end of line.
-- migration 1
CREATE TABLE IF NOT EXISTS users (
  id            BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
  name          VARCHAR(50)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  password      VARBINARY(100) NOT NULL,
  token_version BIGINT       NOT NULL DEFAULT 0,
  created_ms    BIGINT       NOT NULL,
  UNIQUE KEY users_name (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE IF NOT EXISTS friends (
  userid     BIGINT NOT NULL,
  friendid   BIGINT NOT NULL,
  created_ms BIGINT NOT NULL,
  PRIMARY KEY (userid, friendid)
) ENGINE=InnoDB;
CREATE TABLE IF NOT EXISTS chat_groups (
  id         BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
  groupname  VARCHAR(50)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  groupdesc  VARCHAR(200) CHARACTER SET utf8mb4 NOT NULL,
  creator    BIGINT       NOT NULL,
  created_ms BIGINT       NOT NULL,
  UNIQUE KEY chat_groups_name (groupname)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE IF NOT EXISTS group_members (
  groupid   BIGINT      NOT NULL,
  userid    BIGINT      NOT NULL,
  role      VARCHAR(10) NOT NULL,
  joined_ms BIGINT      NOT NULL,
  PRIMARY KEY (groupid, userid),
  KEY group_members_user (userid)
) ENGINE=InnoDB;
CREATE TABLE IF NOT EXISTS inbox_state (
  userid    BIGINT NOT NULL PRIMARY KEY,
  last_seq  BIGINT NOT NULL DEFAULT 0,
  acked_seq BIGINT NOT NULL DEFAULT 0
) ENGINE=InnoDB;
CREATE TABLE IF NOT EXISTS inbox (
  userid     BIGINT  NOT NULL,
  seq        BIGINT  NOT NULL,
  kind       TINYINT NOT NULL,
  fromid     BIGINT  NOT NULL,
  fromname   VARCHAR(50) CHARACTER SET utf8mb4 NOT NULL,
  toid       BIGINT  NOT NULL,
  groupid    BIGINT  NOT NULL,
  body       MEDIUMTEXT CHARACTER SET utf8mb4 NOT NULL,
  created_ms BIGINT  NOT NULL,
  PRIMARY KEY (userid, seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE IF NOT EXISTS sent (
  senderid    BIGINT NOT NULL,
  clientmsgid VARBINARY(80) NOT NULL,
  created_ms  BIGINT NOT NULL,
  PRIMARY KEY (senderid, clientmsgid)
) ENGINE=InnoDB;
CREATE TABLE IF NOT EXISTS settings (
  name  VARCHAR(64) NOT NULL PRIMARY KEY,
  value VARBINARY(256) NOT NULL
) ENGINE=InnoDB;
-- migration 2
-- Group messages are stored once, in a per-group log; each member has a
-- position in it (the highest gseq acknowledged).
CREATE TABLE IF NOT EXISTS group_state (
  groupid  BIGINT NOT NULL PRIMARY KEY,
  last_seq BIGINT NOT NULL DEFAULT 0
) ENGINE=InnoDB;
CREATE TABLE IF NOT EXISTS group_log (
  groupid    BIGINT NOT NULL,
  seq        BIGINT NOT NULL,
  fromid     BIGINT NOT NULL,
  fromname   VARCHAR(50) CHARACTER SET utf8mb4 NOT NULL,
  body       MEDIUMTEXT CHARACTER SET utf8mb4 NOT NULL,
  created_ms BIGINT NOT NULL,
  PRIMARY KEY (groupid, seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE IF NOT EXISTS member_state (
  userid    BIGINT NOT NULL,
  groupid   BIGINT NOT NULL,
  acked_seq BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY (userid, groupid)
) ENGINE=InnoDB;
-- migration 3
-- Inbox acknowledgements, apart from inbox_state: a group commit holds the
-- row locks of its recipients' inbox_state rows until it commits, and an
-- acknowledgement of the same users used to wait for them (and they for
-- it). inbox_state.acked_seq keeps what was acknowledged before.
CREATE TABLE IF NOT EXISTS inbox_ack (
  userid    BIGINT NOT NULL PRIMARY KEY,
  acked_seq BIGINT NOT NULL DEFAULT 0
) ENGINE=InnoDB;
-- migration 4
-- Each group's member count, kept by the transactions that add members
-- (CREATE_GROUP, ADD_GROUP): LOGIN_ACK reports it and the members cap is
-- checked against it (a conditional update) without counting the members.
ALTER TABLE chat_groups ADD COLUMN members BIGINT NOT NULL DEFAULT 0;
UPDATE chat_groups SET members = (SELECT COUNT(*) FROM group_members m WHERE m.groupid = chat_groups.id);
