package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"strconv"
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
// (rowid order: the same few pages fill up; its index holds small entries,
// many users per leaf). Once it holds MergeRows rows it is frozen and its
// twin becomes active; each commit then merges the next key range of the
// frozen log (about as many rows as the commit appended) into inbox or
// sent, sorted, so a user's leaf is dirtied once for all the rows the user
// got meanwhile. When no key is left the frozen log is emptied at once (a
// whole-table DELETE frees its pages without touching its index entry by
// entry). A row is in a log, in its table, or for a while in both: readers
// take the union (Store.Inbox, preparedWriter.dedup).

// logSpec names a log pair (log0 and log1, with indexes log0_idx and
// log1_idx), its table and their shared columns; key is the column key
// ranges are cut on, order the table's primary key and the indexes'
// columns.
type logSpec struct {
	log, idx, table, key, order, cols string
}

var (
	inboxLog = logSpec{log: "inbox_log", idx: "user", table: "inbox", key: "userid", order: "userid, seq",
		cols: "userid, seq, kind, fromid, fromname, toid, groupid, body, created_ms"}
	sentLog = logSpec{log: "sent_log", idx: "key", table: "sent", key: "senderid", order: "senderid, clientmsgid",
		cols: "senderid, clientmsgid, created_ms"}
)

// name is log table i (0 or 1) of the pair.
func (l logSpec) name(i int) string { return l.log + strconv.Itoa(i) }

// logMerger moves one log pair's rows into its table. Only the writer
// goroutine uses it; step works on next, which becomes cur once the commit
// succeeded (a rolled-back commit leaves cur as it was).
type logMerger struct {
	table string
	// per log table: the next range's upper key, the range's merge, and
	// the emptying
	boundary, merge, clear [2]*sqlx.Stmt
	cur, next              mergeState
}

// mergeState is where a logMerger is.
type mergeState struct {
	active   int       // the log commits append to
	rows     int64     // rows appended to it since it became active
	merging  bool      // the other log is frozen and being merged
	from     int64     // the next key range of the frozen log starts here
	switched time.Time // when the logs last swapped roles
}

func newLogMerger(ctx context.Context, db *sqlx.DB, l logSpec) (*logMerger, error) {
	m := &logMerger{table: l.table}
	for i := range 2 {
		log := l.name(i)
		for _, p := range []struct {
			dst   **sqlx.Stmt
			query string
		}{
			// The key of the row after the next quota rows, walking the
			// index (left to itself the planner sorts the whole table).
			{&m.boundary[i], "SELECT " + l.key + " FROM " + log + " INDEXED BY " + log + "_" + l.idx +
				" WHERE " + l.key + " >= ? ORDER BY " + l.key + " LIMIT 1 OFFSET ?"},
			// OR IGNORE: flushLogs may have merged a row already.
			{&m.merge[i], "INSERT OR IGNORE INTO " + l.table + " (" + l.cols + ") SELECT " + l.cols + " FROM " + log +
				" WHERE " + l.key + " >= ? AND " + l.key + " < ? ORDER BY " + l.order},
			{&m.clear[i], "DELETE FROM " + log},
		} {
			st, err := db.PreparexContext(ctx, p.query)
			if err != nil {
				m.close()
				return nil, fmt.Errorf("store: prepare: %w", err)
			}
			*p.dst = st
		}
	}
	return m, nil
}

func (m *logMerger) close() {
	for i := range 2 {
		for _, st := range []*sqlx.Stmt{m.boundary[i], m.merge[i], m.clear[i]} {
			if st != nil {
				st.Close()
			}
		}
	}
}

// step does one commit's share inside tx, after the commit appended
// appended rows to the active log: it freezes the active log once it holds
// target rows (or any row, every interval) and no log is being merged,
// then merges the next key range of about quota rows of the frozen log,
// and empties the frozen log once all of it is merged.
func (m *logMerger) step(ctx context.Context, tx *sqlx.Tx, appended, quota, target int64, every time.Duration, now time.Time) error {
	st := m.cur
	st.rows += appended
	if !st.merging && (st.rows >= target || (st.rows > 0 && now.Sub(st.switched) >= every)) {
		st = mergeState{active: 1 - st.active, merging: true, from: math.MinInt64, switched: now}
	}
	if st.merging {
		frozen := 1 - st.active
		var b int64
		err := tx.StmtxContext(ctx, m.boundary[frozen]).GetContext(ctx, &b, st.from, quota)
		to, done := b, errors.Is(err, sql.ErrNoRows)
		switch {
		case done:
			to = math.MaxInt64
		case err != nil:
			return fmt.Errorf("store: %s merge range: %w", m.table, err)
		case b == st.from: // one key holds more than quota rows: take it whole
			to = b + 1
		}
		if _, err := tx.StmtxContext(ctx, m.merge[frozen]).ExecContext(ctx, st.from, to); err != nil {
			return fmt.Errorf("store: %s merge: %w", m.table, err)
		}
		st.from = to
		if done {
			if _, err := tx.StmtxContext(ctx, m.clear[frozen]).ExecContext(ctx); err != nil {
				return fmt.Errorf("store: %s log clear: %w", m.table, err)
			}
			st.merging = false
		}
	}
	m.next = st
	return nil
}

// flushLogs moves every log row into its table and empties the logs, in one
// transaction. Open and Close call it, outside the writer goroutine, so the
// logs hold only what a running store has not merged yet.
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
		}
		return nil
	})
}
