package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"
)

// Why logs (SQLite only). The inbox is clustered by (userid, seq) and sent
// by (senderid, clientmsgid), so a commit that writes one row for each of a
// thousand users dirties a thousand leaf pages in each: one 4 KiB WAL frame
// per page, however few rows changed on it. At moderate rates that made a
// commit cost ~90 µs per message, and the single writer fell behind long
// before the cores were busy.
//
// So each kind of row has two log tables. Commits append to the active one
// (rowid order: the same few pages fill up; the inbox logs' index holds
// small entries, many users per leaf; the sent logs have none, their keys
// are in the writer's memory, sqlite_sent.go). Once it holds MergeRows
// rows it is frozen and its twin becomes active; each commit then merges
// the next range of the frozen log (about as many rows as the commit
// appended) into inbox or sent, sorted, so a user's leaf is dirtied once
// for all the rows the user got meanwhile. A range takes whole users while
// they fit in its share (a first user with up to twice the share whole).
// Only a user with more than twice the share is cut at a row, and takes
// several commits, instead of making one commit copy them all (at 26,000
// msg/s between ten pairs, one user's 3,300 rows a commit made every
// commit of the copy ~25 ms long, and p99 ~45 ms). When no row is left
// the frozen log is emptied at once (a whole-table DELETE frees its pages
// without touching its index entry by entry). A row is in a log, in its
// table, or for a while in both: readers take the union (Store.Inbox;
// preparedWriter.dedup with sentMemory).

// logSpec names a log pair (log0 and log1, with indexes log0_idx and
// log1_idx if idx is set), its table and their shared columns; order is
// the table's primary key and the indexes' columns, key and sub its two
// columns (a range may end inside a key's rows: logPos). The sent logs
// have no index: the writer keeps their keys in memory (sqlite_sent.go).
type logSpec struct {
	log, idx, table, key, sub, order, cols string
}

var (
	inboxLog = logSpec{log: "inbox_log", idx: "user", table: "inbox", key: "userid", sub: "seq", order: "userid, seq",
		cols: "userid, seq, kind, fromid, fromname, toid, groupid, body, created_ms"}
	sentLog = logSpec{log: "sent_log", table: "sent", key: "senderid", sub: "clientmsgid", order: "senderid, clientmsgid",
		cols: "senderid, clientmsgid, created_ms"}
)

// name is log table i (0 or 1) of the pair.
func (l logSpec) name(i int) string { return l.log + strconv.Itoa(i) }

// logMerger moves one log pair's rows into its table. Only the writer
// goroutine uses it. Where the pair is (mergeState) is a row of log_state,
// read at the start of each commit (load) and written by step in the same
// transaction: a failed commit leaves it as it was, and another process
// on the same file (which BEGIN IMMEDIATE serialises with this one) sees
// the same state.
type logMerger struct {
	table string
	st    mergeState // as of the running attempt (load)
	// A log is frozen once it holds target rows, or any row every after
	// the last switch.
	target int64
	every  time.Duration
	src    rangeSource // finds and copies the frozen log's ranges
	// the state's read and write; per log table: the appends (one per
	// chunk size) and the emptying
	get, put *sqlx.Stmt
	appends  [2]sizedStmt
	clear    [2]*sqlx.Stmt
	close    func() // closes the statements
}

// logPos is a row's place in a log, in its table's key order: the key
// (userid, senderid), then seq in an inbox log or clientmsgid in a sent
// log (the other field is unused). A range of rows starts at a logPos.
type logPos struct {
	Key  int64
	Seq  int64
	Cmid string
}

// logStart is before every row of a log.
var logStart = logPos{Key: math.MinInt64, Seq: math.MinInt64}

// rangeSource finds and copies ranges of a pair's frozen log: the inbox
// logs in SQL through their index (indexedLog), the sent logs from the
// writer's copy of their keys (sentMemory).
type rangeSource interface {
	// boundary returns where the next range of frozen log i, from from
	// on in key order, ends: at the start of the first key whose rows do
	// not all fit in quota rows. If the range's first key alone has more
	// than quota rows from from on, the range takes it whole when they
	// are at most 2*quota, and otherwise ends at the row quota rows on.
	// ok is false when at most quota rows are left from from on: the
	// rest is the last range. (A range that ends after the log's last
	// row may still come back ok; the next step then finds nothing.)
	boundary(ctx context.Context, tx txn, i int, from logPos, quota int64) (to logPos, ok bool, err error)
	// copyRange copies frozen log i's rows from from up to (not
	// including) to into the table, or all from from on when last.
	copyRange(ctx context.Context, tx txn, i int, from, to logPos, last bool) error
	// cleared is told that log i was emptied in tx.
	cleared(i int)
}

// indexedLog is the rangeSource of a log pair with an index on its key
// and an integer sub: per log table, the range's first key with the place
// of the row quota rows on, the key of a row further on, and the range's
// copy (to a row, or to the end).
type indexedLog struct {
	boundaryStmt, keyAt, merge, mergeRest [2]*sqlx.Stmt
}

var _ rangeSource = (*indexedLog)(nil)

func (l *indexedLog) boundary(ctx context.Context, tx txn, i int, from logPos, quota int64) (logPos, bool, error) {
	var (
		b     logPos
		first int64 // the range's first key
	)
	err := tx.stmt(ctx, l.boundaryStmt[i]).QueryRowxContext(ctx, from.Key, from.Seq, from.Key, from.Seq, quota).Scan(&first, &b.Key, &b.Seq)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return logPos{}, false, nil
	case err != nil:
		return logPos{}, false, err
	case b.Key != first:
		b.Seq = math.MinInt64 // whole keys only: end where b's key starts
		return b, true, nil
	}
	// The first key has more than quota rows left: whole up to 2*quota.
	var further int64
	err = tx.stmt(ctx, l.keyAt[i]).QueryRowxContext(ctx, from.Key, from.Seq, 2*quota).Scan(&further)
	switch {
	case errors.Is(err, sql.ErrNoRows) || err == nil && further != first:
		b.Seq = math.MaxInt64 // the first key whole: end after its last row
	case err != nil:
		return logPos{}, false, err
	}
	return b, true, nil
}

func (l *indexedLog) copyRange(ctx context.Context, tx txn, i int, from, to logPos, last bool) error {
	if last {
		return execRows(ctx, tx.stmt(ctx, l.mergeRest[i]), from.Key, from.Seq)
	}
	return execRows(ctx, tx.stmt(ctx, l.merge[i]), from.Key, from.Seq, to.Key, to.Seq)
}

func (*indexedLog) cleared(int) {}

// mergeState is where a log pair is (a log_state row).
type mergeState struct {
	Active  int   `db:"active"`  // the log commits append to
	Rows    int64 `db:"rows"`    // rows appended to it since it became active
	Merging bool  `db:"merging"` // the other log is frozen and being copied
	// The next range of the frozen log starts at this logPos (from_seq,
	// from_cmid and from_sub_key: migration 5). FromSubKey is the key
	// FromSeq and FromCmid belong to: an older binary moves From on
	// alone, and its position is then the start of From's rows (from).
	From       int64  `db:"from_key"`
	FromSeq    int64  `db:"from_seq"`
	FromCmid   string `db:"from_cmid"`
	FromSubKey int64  `db:"from_sub_key"`
	SwitchedMS int64  `db:"switched_ms"` // when the logs last swapped roles (or the store opened)
	// Gen is a random value drawn anew at every write of the row (every
	// commit that appends to, freezes, copies or empties a log of the
	// pair, and flushLogs), so that a copy of the logs kept in memory can
	// tell whether they changed since it last saw them
	// (sentMemory.verify).
	Gen int64 `db:"gen"`
}

func (st *mergeState) from() logPos {
	if st.FromSubKey != st.From {
		return logPos{Key: st.From, Seq: math.MinInt64}
	}
	return logPos{st.From, st.FromSeq, st.FromCmid}
}

func (st *mergeState) setFrom(p logPos) {
	st.From, st.FromSeq, st.FromCmid, st.FromSubKey = p.Key, p.Seq, p.Cmid, p.Key
}

// newLogMerger prepares the statements of pair l. src is where the frozen
// log's ranges come from; nil means l's key index (indexedLog).
func newLogMerger(ctx context.Context, db preparer, l logSpec, target int64, every time.Duration, src rangeSource) (*logMerger, error) {
	m := &logMerger{table: l.table, target: target, every: every, src: src}
	preps := []prepStmt{
		{&m.get, "SELECT active, rows, merging, from_key, from_seq, from_cmid, from_sub_key, switched_ms, gen FROM log_state WHERE name = '" + l.log + "'"},
		{&m.put, "UPDATE log_state SET active = ?, rows = ?, merging = ?, from_key = ?, from_seq = ?, from_cmid = ?, from_sub_key = ?, switched_ms = ?, gen = ? WHERE name = '" + l.log + "'"},
	}
	var idx *indexedLog
	if src == nil {
		idx = &indexedLog{}
		m.src = idx
	}
	row := "(" + strings.Repeat("?, ", strings.Count(l.cols, ",")) + "?)"
	for i := range 2 {
		log := l.name(i)
		insert := "INSERT INTO " + log + " (" + l.cols + ") VALUES "
		preps = append(preps, m.appends[i].preps(func(n int) string { return insert + placeholders(n, row) })...)
		preps = append(preps, prepStmt{&m.clear[i], "DELETE FROM " + log})
		if idx == nil {
			continue
		}
		// Row values: the index is searched from a row on, not scanned.
		pos := "(" + l.key + ", " + l.sub + ")"
		indexed := " INDEXED BY " + log + "_" + l.idx
		keyAt := "SELECT " + l.key + " FROM " + log + indexed + " WHERE " + pos + " >= (?, ?) ORDER BY " + l.order
		copyFrom := "INSERT OR IGNORE INTO " + l.table + " (" + l.cols + ") SELECT " + l.cols + " FROM " + log +
			indexed + " WHERE " + pos + " >= (?, ?)"
		preps = append(preps,
			// The key of the first row and the place of the row quota rows
			// on; the key of a row further on. Both walk the index (left to
			// itself the planner sorts the whole table).
			prepStmt{&idx.boundaryStmt[i], "SELECT (" + keyAt + " LIMIT 1), " + l.key + ", " + l.sub +
				" FROM " + log + indexed + " WHERE " + pos + " >= (?, ?) ORDER BY " + l.order + " LIMIT 1 OFFSET ?"},
			prepStmt{&idx.keyAt[i], keyAt + " LIMIT 1 OFFSET ?"},
			// OR IGNORE only as a guard: each row is copied once.
			prepStmt{&idx.merge[i], copyFrom + " AND " + pos + " < (?, ?) ORDER BY " + l.order},
			prepStmt{&idx.mergeRest[i], copyFrom + " ORDER BY " + l.order})
	}
	var err error
	if m.close, err = prepareAll(ctx, db, preps); err != nil {
		return nil, err
	}
	return m, nil
}

// append adds n rows to the active log inside tx, a chunk per statement;
// args(lo, hi) gives the values of rows [lo, hi).
func (m *logMerger) append(ctx context.Context, tx txn, n int, args func(lo, hi int) []any) error {
	return m.appends[m.st.Active].inChunks(ctx, tx, n, func(st *sqlx.Stmt, lo, hi int) error {
		return execRows(ctx, st, args(lo, hi)...)
	})
}

// load reads the pair's state at the start of an attempt, inside its
// transaction.
func (m *logMerger) load(ctx context.Context, tx txn) error {
	if err := tx.stmt(ctx, m.get).GetContext(ctx, &m.st); err != nil {
		return fmt.Errorf("store: %s log state: %w", m.table, err)
	}
	return nil
}

// step does one commit's share inside tx, after the commit appended
// appended rows to the active log: it freezes the active log once it holds
// target rows (or any row, every interval) and no log is being copied,
// then copies the next range of the frozen log, and empties the frozen
// log once all of it is copied. A range holds about 1¼ times the rows the
// commit appended, so a frozen log is copied before its twin fills up,
// and at least a floor, so small commits still make progress.
func (m *logMerger) step(ctx context.Context, tx txn, appended int64, now time.Time) error {
	quota := appended*5/4 + min(256, max(1, m.target/8))
	st := m.st
	st.Rows += appended
	if !st.Merging && (st.Rows >= m.target || (st.Rows > 0 && now.UnixMilli()-st.SwitchedMS >= m.every.Milliseconds())) {
		st = mergeState{Active: 1 - st.Active, Merging: true, SwitchedMS: now.UnixMilli()}
		st.setFrom(logStart)
	}
	if st.Merging {
		frozen := 1 - st.Active
		from := st.from()
		b, ok, err := m.src.boundary(ctx, tx, frozen, from, quota)
		if err != nil {
			return fmt.Errorf("store: %s copy range: %w", m.table, err)
		}
		if err := m.src.copyRange(ctx, tx, frozen, from, b, !ok); err != nil {
			return fmt.Errorf("store: %s copy: %w", m.table, err)
		}
		st.setFrom(b)
		if !ok {
			if err := execRows(ctx, tx.stmt(ctx, m.clear[frozen])); err != nil {
				return fmt.Errorf("store: %s log clear: %w", m.table, err)
			}
			m.src.cleared(frozen)
			st.Merging = false
			st.setFrom(logPos{})
		}
	}
	if st != m.st {
		// Every write of the state draws a new gen, whatever changed: a
		// gen written twice could match a stale copy (sentMemory.verify).
		st.Gen = rand.Int64()
		if err := execRows(ctx, tx.stmt(ctx, m.put), int64(st.Active), st.Rows, st.Merging, st.From, st.FromSeq, st.FromCmid, st.FromSubKey, st.SwitchedMS, st.Gen); err != nil {
			return fmt.Errorf("store: %s log state: %w", m.table, err)
		}
		m.st = st // as this attempt leaves it
	}
	return nil
}

// flushLogs copies every log row into its table, empties the logs and
// resets their state, in one transaction. Open and Close call it, outside
// the writer goroutine: after a crash the logs are copied at the next
// open, and after a clean stop the tables alone hold everything.
func (s *Store) flushLogs(ctx context.Context) error {
	return s.inTx(ctx, func(tx *sqlx.Tx) error {
		for _, l := range []logSpec{inboxLog, sentLog} {
			for i := range 2 {
				if _, err := tx.ExecContext(ctx, "INSERT OR IGNORE INTO "+l.table+" ("+l.cols+") SELECT "+l.cols+
					" FROM "+l.name(i)+" ORDER BY "+l.order); err != nil {
					return fmt.Errorf("store: flush %s: %w", l.name(i), err)
				}
				if _, err := tx.ExecContext(ctx, "DELETE FROM "+l.name(i)); err != nil {
					return fmt.Errorf("store: flush %s: %w", l.name(i), err)
				}
			}
			if _, err := tx.ExecContext(ctx, "UPDATE log_state SET active = 0, rows = 0, merging = 0, from_key = 0, from_seq = 0, from_cmid = '', from_sub_key = 0, switched_ms = ?, gen = ? WHERE name = ?",
				time.Now().UnixMilli(), rand.Int64(), l.log); err != nil {
				return fmt.Errorf("store: flush %s: %w", l.log, err)
			}
		}
		return nil
	})
}
