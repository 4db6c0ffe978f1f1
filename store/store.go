// Package store keeps users, friends, groups and the durable message inbox in
// SQLite (embedded default; SQLite's C library through cgo, or its pure-Go
// translation in builds without cgo: SQLiteImplementation) or MySQL/MariaDB
// (go-sql-driver/mysql), through one set of sqlx DAOs with "?" placeholders.
//
// A *Store is safe for concurrent use. Sends are group-committed: one writer
// goroutine commits every Send queued while the previous commit ran in one
// transaction.
package store

import (
	"cmp"
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jmoiron/sqlx"

	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/service"
)

// Errors of this package, beside the service.Err* sentinels its methods
// return for the service layer.
var (
	// ErrBadDSN: the DSN is neither sqlite:PATH nor mysql:DSN.
	ErrBadDSN = errors.New("store: dsn must be sqlite:PATH or mysql:USER:PASS@tcp(HOST:PORT)/DB")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("store: closed")
)

// Config configures Open. The zero value of every field but DSN is a
// sensible default.
type Config struct {
	// DSN is "sqlite:PATH" (PATH may carry ?_pragma=... query options) or
	// "mysql:USER:PASS@tcp(HOST:PORT)/DB" (a go-sql-driver/mysql DSN).
	DSN string
	// MaxBatch bounds the weight of one group commit: a one-to-one send
	// counts 1, a group send 1 plus an eighth of its recipients (the
	// entries it hands to the commit hook); default 16384.
	MaxBatch int
	// MaxOpenConns bounds the main connection pool; default 32 (MySQL), 8
	// (SQLite). On MySQL the group commits have Writers connections more,
	// in a pool of their own; on SQLite the writer holds one of the pool's
	// for good, so it is at least 2.
	MaxOpenConns int
	// Writers (MySQL) is how many group commits run at once, each on its
	// own connection, a sender's sends always through the same one;
	// default 2. SQLite always has one (one writer at a time).
	Writers int
	// ConnMaxLifetime recycles pooled connections; default 3 minutes, below
	// MySQL's wait_timeout.
	ConnMaxLifetime time.Duration
	// QueryTimeout bounds each store call that has no deadline; default 5 s.
	QueryTimeout time.Duration
	// CheckpointInterval (SQLite) is the longest a background goroutine
	// waits between copies of the write-ahead log into the database file;
	// default 1 s. It copies sooner, as often as every tenth of that (at
	// most every 100 ms), once the writer has committed CheckpointRows
	// rows since the last copy (checkpoint.go says why).
	CheckpointInterval time.Duration
	// CheckpointRows (SQLite) is that many rows: one-to-one messages,
	// acknowledgements and group messages, each weighed as in a group
	// commit; default 4096.
	CheckpointRows int
	// MergeRows (SQLite) is how many one-to-one messages (and dedup keys)
	// collect in the append-only logs before they are merged into the
	// per-user tables, a range per commit; default 32768. More rows
	// per user per merge dirty fewer pages per message.
	MergeRows int
	// MergeInterval (SQLite) merges the logs at least this often when they
	// hold fewer than MergeRows rows; default 5 s.
	MergeInterval time.Duration
	// WriterPriority (SQLite, Linux) is how many nice levels the group
	// commit's thread runs above the rest of the process (its nice value
	// that much lower, -20 at the lowest). Every send waits for that one
	// writer, so when the cores are contended it should get one before
	// per-connection work does: 10 levels gave ×1.03–1.18 flat out on the
	// 2-core benchmark machine (docs/BENCHMARKS-history.md, session 8).
	// Nice values rank the threads of one cgroup (or autogroup) against
	// each other, so this does not favour the node over other services.
	// Lowering a nice value needs CAP_SYS_NICE (root usually has it) or an
	// RLIMIT_NICE that allows it (systemd: LimitNICE=); without them the
	// writer goes as far as RLIMIT_NICE allows, and Open logs what it got.
	// Default 10; negative leaves the thread alone.
	WriterPriority int
	// Logger receives store events; default slog.Default().
	Logger *slog.Logger
}

// Store is the SQL implementation of service.Store.
type Store struct {
	db      *sqlx.DB
	dialect dialect
	cfg     Config
	log     *slog.Logger
	batcher *batcher
	// wdb (MySQL) is the group commits' pool, a connection per lane, which
	// allows multi-statement queries (commitMySQL); nil on SQLite.
	wdb *sqlx.DB
	// tripBytes bounds what one of wdb's round trips sends (maxTripBytes,
	// or less where the server's max_allowed_packet is small).
	tripBytes int
	// ckpt is the SQLite WAL checkpointer; nil on MySQL.
	ckpt   *checkpointer
	writer sendWriter
	// closeWriter releases the writer's prepared statements, if any.
	closeWriter func()
	// users, inboxStates, friends and groups batch the reads a login
	// makes (readBatcher).
	users       *readBatcher[codec.UserID, User]
	inboxStates *readBatcher[codec.UserID, [2]codec.Seq]
	friends     *readBatcher[codec.UserID, []service.Member]
	groups      *readBatcher[codec.UserID, []service.Group]
	// members batches the member lists logins read (GroupMembersOf),
	// shared by the callers of one batch.
	members *readBatcher[codec.GroupID, []service.Member]
	// retries counts the statements and transactions tried again after a
	// deadlock, a lock wait timeout or a snapshot conflict (retrying).
	retries atomic.Int64
}

var _ service.Store = (*Store)(nil)

// Open connects, applies the embedded migrations and starts the commit
// goroutine. Close releases everything.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 16384
	}
	if cfg.ConnMaxLifetime <= 0 {
		cfg.ConnMaxLifetime = 3 * time.Minute
	}
	if cfg.QueryTimeout <= 0 {
		cfg.QueryTimeout = 5 * time.Second
	}
	if cfg.CheckpointInterval <= 0 {
		cfg.CheckpointInterval = time.Second
	}
	if cfg.CheckpointRows <= 0 {
		cfg.CheckpointRows = 4096
	}
	if cfg.MergeRows <= 0 {
		cfg.MergeRows = 32768
	}
	if cfg.MergeInterval <= 0 {
		cfg.MergeInterval = 5 * time.Second
	}
	if cfg.WriterPriority == 0 {
		cfg.WriterPriority = 10
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	_, dsn, d, err := parseDSN(cfg.DSN)
	if err != nil {
		return nil, err
	}
	if cfg.MaxOpenConns <= 0 {
		cfg.MaxOpenConns = d.defaultConns
	}
	if d.name == "sqlite" {
		cfg.MaxOpenConns = max(cfg.MaxOpenConns, 2) // the writer holds one
	}
	switch {
	case d.name == "sqlite":
		cfg.Writers = 1
	case cfg.Writers <= 0:
		cfg.Writers = 2
	}
	var db *sqlx.DB
	if d.name == "sqlite" {
		db, err = openSQLite(dsn)
	} else {
		var mc *mysql.Config
		if mc, err = mysql.ParseDSN(dsn); err == nil {
			db, err = openMySQLPool(mc, cfg.Logger)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("store: open: %w", err)
	}
	sizePool(db, cfg.MaxOpenConns, cfg.ConnMaxLifetime)
	s := &Store{db: db, dialect: d, cfg: cfg, log: cfg.Logger}
	t := cfg.QueryTimeout
	s.users = &readBatcher[codec.UserID, User]{fetch: s.fetchUsers, timeout: t, clone: func(u User) User {
		u.PasswordHash = slices.Clone(u.PasswordHash)
		return u
	}}
	s.inboxStates = &readBatcher[codec.UserID, [2]codec.Seq]{fetch: s.fetchInboxStates, timeout: t}
	s.friends = &readBatcher[codec.UserID, []service.Member]{fetch: s.fetchFriends, timeout: t, clone: func(m []service.Member) []service.Member {
		return append([]service.Member{}, m...) // never nil: no friends is an empty list
	}}
	s.groups = &readBatcher[codec.UserID, []service.Group]{fetch: s.fetchUserGroups, timeout: t, clone: func(gs []service.Group) []service.Group {
		return append([]service.Group{}, gs...) // never nil, as friends
	}}
	s.members = &readBatcher[codec.GroupID, []service.Member]{timeout: t, fetch: func(ctx context.Context, gids []codec.GroupID) (map[codec.GroupID][]service.Member, error) {
		return selectMembers(ctx, s.db, gids)
	}}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	if d.name == "sqlite" {
		s.log.Info("sqlite store open", "library", SQLiteImplementation)
		// Rows a stopped store left in the logs go to their tables first.
		if err := s.flushLogs(ctx); err != nil {
			db.Close()
			return nil, err
		}
		pw, err := newPreparedWriter(ctx, db, &s.retries, int64(cfg.MergeRows), cfg.MergeInterval)
		if err != nil {
			db.Close()
			return nil, err
		}
		s.writer, s.closeWriter = pw, pw.close
		s.ckpt = startCheckpointer(s, cfg.CheckpointInterval, int64(cfg.CheckpointRows))
	} else {
		s.writer = multiRowWriter{bumpSeq: d.bumpSeq, ackInbox: d.ackInbox, forUpdate: d.forUpdate}
		if s.wdb, s.tripBytes, err = openWriterPool(ctx, dsn, cfg); err != nil {
			db.Close()
			return nil, err
		}
	}
	s.batcher = newBatcher(s, cfg.MaxBatch, cfg.Writers)
	return s, nil
}

// openMySQLPool opens a pool on mc whose driver logs to log (at Warn)
// instead of to stderr past the process's log format.
func openMySQLPool(mc *mysql.Config, log *slog.Logger) (*sqlx.DB, error) {
	mc.Logger = mysqlLog{log}
	connector, err := mysql.NewConnector(mc)
	if err != nil {
		return nil, fmt.Errorf("store: open: %w", err)
	}
	return sqlx.NewDb(sql.OpenDB(connector), "mysql"), nil
}

// mysqlLog is the MySQL driver's logger (a bad idle connection closed, for
// one) on a slog.Logger: one message, so that the log's throttle counts
// them together, with the driver's text as "detail" (it holds addresses).
type mysqlLog struct{ log *slog.Logger }

func (m mysqlLog) Print(v ...any) {
	m.log.Warn("mysql driver", "detail", strings.TrimSpace(fmt.Sprint(v...)))
}

// openWriterPool opens the MySQL group commits' pool: dsn with
// multi-statement queries allowed, cfg.Writers connections. Every value
// still goes in as an argument, escaped by the driver (interpolateParams).
// It also returns how much one round trip may carry: maxTripBytes, or half
// the server's or the DSN's max_allowed_packet if that is less.
func openWriterPool(ctx context.Context, dsn string, cfg Config) (*sqlx.DB, int, error) {
	mc, err := mysql.ParseDSN(dsn)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %v", ErrBadDSN, err)
	}
	mc.MultiStatements = true
	if mc.Params == nil {
		mc.Params = map[string]string{}
	}
	if _, ok := mc.Params["innodb_lock_wait_timeout"]; !ok {
		// A commit's lock wait ends on the server before the commit stops
		// waiting for its outcome (commitOutcomeWait).
		mc.Params["innodb_lock_wait_timeout"] = strconv.Itoa(lockWaitSeconds(cfg.QueryTimeout))
	}
	wdb, err := openMySQLPool(mc, cfg.Logger)
	if err != nil {
		return nil, 0, err
	}
	sizePool(wdb, cfg.Writers, cfg.ConnMaxLifetime)
	ctx, cancel := context.WithTimeout(ctx, cfg.QueryTimeout)
	defer cancel()
	var packet int
	if err := wdb.GetContext(ctx, &packet, "SELECT @@max_allowed_packet"); err != nil {
		wdb.Close()
		return nil, 0, fmt.Errorf("store: max_allowed_packet: %w", err)
	}
	trip := min(maxTripBytes, packet/2)
	if mc.MaxAllowedPacket > 0 {
		trip = min(trip, mc.MaxAllowedPacket/2)
	}
	return wdb, trip, nil
}

// sizePool keeps up to conns connections in db, idle ones too, each
// recycled after lifetime (or half that idle).
func sizePool(db *sqlx.DB, conns int, lifetime time.Duration) {
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns)
	db.SetConnMaxLifetime(lifetime)
	db.SetConnMaxIdleTime(lifetime / 2)
}

// Close stops the commit goroutine after it committed what was queued, then
// closes the database.
func (s *Store) Close() error {
	s.batcher.close()
	if s.dialect.name == "sqlite" {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.QueryTimeout)
		if err := s.flushLogs(ctx); err != nil {
			s.log.Warn("log flush failed; the next open retries it", "err", err)
		}
		cancel()
	}
	if s.ckpt != nil {
		s.ckpt.close()
	}
	if s.closeWriter != nil {
		s.closeWriter()
	}
	if s.wdb != nil {
		s.wdb.Close()
	}
	return s.db.Close()
}

// DB exposes the underlying handle for tests and tools.
func (s *Store) DB() *sqlx.DB { return s.db }

// Driver returns "sqlite" or "mysql".
func (s *Store) Driver() string { return s.dialect.name }

func parseDSN(dsn string) (driver, conn string, d dialect, err error) {
	kind, rest, ok := strings.Cut(dsn, ":")
	if !ok || rest == "" {
		return "", "", d, ErrBadDSN
	}
	switch kind {
	case "sqlite":
		path, query, _ := strings.Cut(rest, "?")
		opts, err := url.ParseQuery(query)
		if err != nil {
			return "", "", d, fmt.Errorf("%w: %v", ErrBadDSN, err)
		}
		for _, p := range opts["_pragma"] {
			if _, _, ok := splitPragma(p); !ok {
				return "", "", d, fmt.Errorf("%w: _pragma=%s is not NAME(VALUE)", ErrBadDSN, p)
			}
		}
		for _, p := range sqlitePragmas {
			if !strings.Contains(query, p.name) {
				query = addParam(query, "_pragma="+p.name+"("+p.value+")")
			}
		}
		query = addParam(query, "_txlock=immediate")
		return "sqlite", "file:" + path + "?" + query, sqliteDialect, nil
	case "mysql":
		mc, err := mysql.ParseDSN(rest)
		if err != nil {
			return "", "", d, fmt.Errorf("%w: %v", ErrBadDSN, err)
		}
		if mc.Params == nil {
			mc.Params = map[string]string{}
		}
		mc.InterpolateParams = true
		mc.ParseTime = false
		if mc.Timeout == 0 {
			mc.Timeout = 3 * time.Second
		}
		if mc.ReadTimeout == 0 {
			mc.ReadTimeout = 10 * time.Second
		}
		if mc.WriteTimeout == 0 {
			mc.WriteTimeout = 10 * time.Second
		}
		if _, ok := mc.Params["charset"]; !ok {
			mc.Params["charset"] = "utf8mb4"
		}
		return "mysql", mc.FormatDSN(), mysqlDialect, nil
	}
	return "", "", d, ErrBadDSN
}

// sqlitePragmas are the SQLite settings a DSN gets unless it sets them.
var sqlitePragmas = []struct{ name, value string }{
	{"busy_timeout", "10000"},
	{"journal_mode", "WAL"},
	{"synchronous", "FULL"},
	{"temp_store", "MEMORY"},
	{"cache_size", "-65536"}, // 64 MiB
	// The checkpointer goroutine copies the log beside the commits; a
	// commit finishes the copy only once the log reaches 32 MiB.
	{"wal_autocheckpoint", "8192"},
	{"journal_size_limit", "67108864"},
}

// splitPragma splits a "_pragma" option, NAME(VALUE).
func splitPragma(p string) (name, value string, ok bool) {
	body, closed := strings.CutSuffix(p, ")")
	name, value, ok = strings.Cut(body, "(")
	return name, value, ok && closed && name != ""
}

func addParam(q, p string) string {
	if q == "" {
		return p
	}
	return q + "&" + p
}

// dialect holds the few statements that differ between the drivers.
type dialect struct {
	name         string
	defaultConns int
	// bumpSeq (MySQL) upserts last_seq += n and raises acked_seq to ack
	// unless ack is beyond last_seq; "%s" takes the (userid, n, ack) rows.
	bumpSeq      string
	insertIgnore string
	// bumpGroup upserts group_state.last_seq += n for one (groupid, n).
	bumpGroup string
	// ackGroup upserts member_state, never lowering acked_seq; "%s" takes
	// the (userid, groupid, acked_seq) rows.
	ackGroup string
	// forUpdate and forShare make a SELECT a locking read (MySQL); SQLite
	// transactions are serialised anyway. In a MySQL write transaction
	// the reads before its last locking statement are locking ones (but
	// selectSent's): a plain read fixes the transaction's snapshot, and
	// with innodb_snapshot_isolation (MariaDB's default from 11.6.2) a
	// later upsert of a row another transaction changed since fails with
	// error 1020 instead of waiting for it.
	forUpdate, forShare string
	// ackInbox (MySQL) upserts inbox_ack, never lowering acked_seq; "%s"
	// takes the (userid, acked_seq) rows.
	ackInbox string
	// inboxStates reads (userid, last_seq, acked_seq) of the users in its
	// IN (?) (sqlx.In).
	inboxStates string
}

var (
	sqliteDialect = dialect{
		name:         "sqlite",
		defaultConns: 8,
		insertIgnore: "INSERT OR IGNORE",
		bumpGroup: "INSERT INTO group_state (groupid, last_seq) VALUES (?, ?) " +
			"ON CONFLICT (groupid) DO UPDATE SET last_seq = last_seq + excluded.last_seq",
		ackGroup: "INSERT INTO member_state (userid, groupid, acked_seq) VALUES %s " +
			"ON CONFLICT (userid, groupid) DO UPDATE SET acked_seq = max(acked_seq, excluded.acked_seq)",
		inboxStates: "SELECT userid, last_seq, acked_seq FROM inbox_state WHERE userid IN (?)",
	}
	mysqlDialect = dialect{
		name:         "mysql",
		defaultConns: 32,
		bumpSeq: "INSERT INTO inbox_state (userid, last_seq, acked_seq) VALUES %s ON DUPLICATE KEY UPDATE " +
			"last_seq = last_seq + VALUES(last_seq), acked_seq = IF(VALUES(acked_seq) <= last_seq, GREATEST(acked_seq, VALUES(acked_seq)), acked_seq)",
		insertIgnore: "INSERT IGNORE",
		bumpGroup: "INSERT INTO group_state (groupid, last_seq) VALUES (?, ?) " +
			"ON DUPLICATE KEY UPDATE last_seq = last_seq + VALUES(last_seq)",
		ackGroup: "INSERT INTO member_state (userid, groupid, acked_seq) VALUES %s " +
			"ON DUPLICATE KEY UPDATE acked_seq = GREATEST(acked_seq, VALUES(acked_seq))",
		forUpdate: " FOR UPDATE",
		forShare:  " LOCK IN SHARE MODE",
		ackInbox: "INSERT INTO inbox_ack (userid, acked_seq) VALUES %s " +
			"ON DUPLICATE KEY UPDATE acked_seq = GREATEST(acked_seq, VALUES(acked_seq))",
		inboxStates: "SELECT s.userid, s.last_seq, GREATEST(s.acked_seq, COALESCE(a.acked_seq, 0)) AS acked_seq " +
			"FROM inbox_state AS s LEFT JOIN inbox_ack AS a ON a.userid = s.userid WHERE s.userid IN (?)",
	}
)

// isConflict reports a unique or primary key violation.
func isConflict(err error) bool {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return me.Number == 1062
	}
	return err != nil && strings.Contains(err.Error(), "UNIQUE constraint failed")
}

// isRetryable reports a deadlock or lock timeout worth retrying.
func isRetryable(err error) bool {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		// Deadlock, lock wait timeout, and "record has changed since last
		// read" (innodb_snapshot_isolation).
		return me.Number == 1213 || me.Number == 1205 || me.Number == 1020
	}
	return err != nil && (strings.Contains(err.Error(), "SQLITE_BUSY") || strings.Contains(err.Error(), "database is locked"))
}

// unavailable wraps a driver error as service.ErrUnavailable, keeping the
// cause for logs.
func unavailable(err error) error {
	if err == nil || errors.Is(err, service.ErrNotFound) || errors.Is(err, service.ErrConflict) || errors.Is(err, service.ErrUnavailable) ||
		errors.Is(err, service.ErrLimit) || errors.Is(err, service.ErrNotMember) {
		return err
	}
	return fmt.Errorf("%w: %v", service.ErrUnavailable, err)
}

func (s *Store) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, s.cfg.QueryTimeout)
}

// inTx runs fn in a transaction, retrying deadlocks a few times.
func (s *Store) inTx(ctx context.Context, fn func(tx *sqlx.Tx) error) error {
	_, err := s.inTxTicket(ctx, fn, nil, nil)
	return err
}

// inTxTicket is inTx, calling take (if not nil) just before each COMMIT
// and returning what it returned when the COMMIT succeeds; skip gets the
// ticket of a COMMIT that failed.
func (s *Store) inTxTicket(ctx context.Context, fn func(tx *sqlx.Tx) error, take func() uint64, skip func(uint64)) (uint64, error) {
	return ticketedTx(ctx, &s.retries, func() (*sqlx.Tx, func(commit bool) error, error) {
		tx, err := s.db.BeginTxx(ctx, nil)
		if err != nil {
			return nil, nil, err
		}
		return tx, func(commit bool) error {
			if commit {
				return tx.Commit()
			}
			return tx.Rollback()
		}, nil
	}, fn, take, skip)
}

// ticketedTx runs fn in a transaction that begin starts, retrying
// deadlocks and lock timeouts (retrying); begin returns what fn runs in
// and end, which commits the transaction (true) or rolls it back. take (if
// not nil) is called just before each COMMIT, and what it returned is
// returned when the COMMIT succeeds; skip gets the ticket of a COMMIT that
// failed. A failed begin is not retried: SQLite's busy_timeout has waited
// already.
func ticketedTx[T any](ctx context.Context, retries *atomic.Int64, begin func() (T, func(commit bool) error, error), fn func(T) error, take func() uint64, skip func(uint64)) (t uint64, err error) {
	var beginErr error
	err = retrying(ctx, retries, func() error {
		tx, end, err := begin()
		if err != nil {
			beginErr = err
			return nil
		}
		if err := fn(tx); err != nil {
			_ = end(false)
			return err
		}
		if take != nil {
			t = take()
		}
		if err := end(true); err != nil {
			if skip != nil {
				skip(t)
			}
			return err
		}
		return nil
	})
	if err = cmp.Or(beginErr, err); err != nil {
		return 0, err
	}
	return t, nil
}

// maxAttempts bounds the tries of a statement or transaction that keeps
// hitting deadlocks or lock timeouts.
const maxAttempts = 5

// retrying runs fn until it succeeds, fails otherwise than with a deadlock
// or lock timeout (isRetryable), ctx ends, or maxAttempts tries were made,
// waiting 5 ms longer before each retry than before the last, and adding
// each retry to retries (if not nil). It returns fn's last error.
func retrying(ctx context.Context, retries *atomic.Int64, fn func() error) error {
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil || !isRetryable(err) || ctx.Err() != nil || attempt == maxAttempts {
			return err
		}
		if retries != nil {
			retries.Add(1)
		}
		time.Sleep(time.Duration(attempt) * 5 * time.Millisecond)
	}
}

// Secret returns the token signing key shared by every node of the cluster,
// creating a random one the first time.
func (s *Store) Secret(ctx context.Context) ([]byte, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if _, err := s.db.ExecContext(ctx, s.dialect.insertIgnore+" INTO settings (name, value) VALUES (?, ?)", "token_secret", key); err != nil {
		return nil, unavailable(err)
	}
	var got []byte
	if err := s.db.GetContext(ctx, &got, "SELECT value FROM settings WHERE name = ?", "token_secret"); err != nil {
		return nil, unavailable(err)
	}
	return got, nil
}
