-- chatcluster: MariaDB/MySQL bootstrap for a cluster. Run once as an admin:
--   mariadb -uroot < deploy/mariadb-bootstrap.sql
-- It creates the database and the account the nodes use. The tables
-- themselves are created by chatserver at start-up (embedded, numbered,
-- idempotent migrations serialised across nodes with GET_LOCK); to create
-- them ahead of the first start, run: chatserver -db mysql:... -migrate
-- Change the password, and the host part ('%') to your nodes' network.
CREATE DATABASE IF NOT EXISTS chat CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE USER IF NOT EXISTS 'chat'@'%' IDENTIFIED BY 'change-me';
GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX, REFERENCES ON chat.* TO 'chat'@'%';
FLUSH PRIVILEGES;
