package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/service"
)

// inboxRows is the row count of the prepared multi-row inbox insert.
const inboxRows = 64

// preparedWriter is the SQLite sendWriter: statements prepared once and
// reused by every commit (database/sql re-binds them to the commit's
// connection), so no commit parses SQL. One-to-one rows and dedup keys go
// to the logs (sqlite_log.go); each commit copies a share of them into
// inbox and sent.
type preparedWriter struct {
	sentLook, sentLookOne, seqBump, seqBumpMany, ack *sqlx.Stmt
	inbox, sent                                      *logMerger
	closeOwn                                         func() // closes the statements above
}

func newPreparedWriter(ctx context.Context, db *sqlx.DB, mergeRows int64, mergeEvery time.Duration) (*preparedWriter, error) {
	w := &preparedWriter{}
	// A key sent before is in sent, in a sent log, or in both.
	look := func(n int) string {
		q := "WITH v (senderid, clientmsgid) AS (VALUES " + placeholders(n, "(?, ?)") + ") "
		for i, t := range []string{"sent", sentLog.name(0), sentLog.name(1)} {
			if i > 0 {
				q += " UNION ALL "
			}
			q += "SELECT t.senderid, t.clientmsgid, t.created_ms FROM v CROSS JOIN " + t +
				" AS t ON t.senderid = v.senderid AND t.clientmsgid = v.clientmsgid"
		}
		return q
	}
	preps := []prepStmt{
		{&w.sentLook, look(inboxRows)},
		{&w.sentLookOne, look(1)},
		{&w.seqBump, "UPDATE inbox_state SET last_seq = last_seq + ? WHERE userid = ? RETURNING last_seq"},
		{&w.seqBumpMany, "UPDATE inbox_state SET last_seq = last_seq + v.column2 FROM (VALUES " +
			placeholders(inboxRows, "(?, ?)") + ") AS v WHERE inbox_state.userid = v.column1 RETURNING userid, last_seq"},
		{&w.ack, "UPDATE inbox_state SET acked_seq = ? WHERE userid = ? AND acked_seq < ? AND last_seq >= ?"},
	}
	var err error
	if w.closeOwn, err = prepareAll(ctx, db, preps); err != nil {
		return nil, err
	}
	if w.inbox, err = newLogMerger(ctx, db, inboxLog, mergeRows, mergeEvery); err == nil {
		w.sent, err = newLogMerger(ctx, db, sentLog, mergeRows, mergeEvery)
	}
	if err != nil {
		w.close()
		return nil, err
	}
	return w, nil
}

// prepStmt is a statement to prepare into dst.
type prepStmt struct {
	dst   **sqlx.Stmt
	query string
}

// prepareAll prepares every statement of preps and returns what closes
// them; on an error it closes those it prepared.
func prepareAll(ctx context.Context, db *sqlx.DB, preps []prepStmt) (func(), error) {
	closeAll := func() {
		for _, p := range preps {
			if *p.dst != nil {
				(*p.dst).Close()
			}
		}
	}
	for _, p := range preps {
		st, err := db.PreparexContext(ctx, p.query)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("store: prepare: %w", err)
		}
		*p.dst = st
	}
	return closeAll, nil
}

func (w *preparedWriter) close() {
	w.closeOwn()
	for _, m := range []*logMerger{w.inbox, w.sent} {
		if m != nil {
			m.close()
		}
	}
}

// merge does this commit's share of copying log rows into inbox and sent
// (logMerger.step).
func (w *preparedWriter) merge(ctx context.Context, tx *sqlx.Tx, inboxRows, sentRows int) error {
	now := time.Now()
	if err := w.inbox.step(ctx, tx, int64(inboxRows), now); err != nil {
		return err
	}
	return w.sent.step(ctx, tx, int64(sentRows), now)
}

// begin implements sendWriter: where the logs are, as of this attempt.
func (w *preparedWriter) begin(ctx context.Context, tx *sqlx.Tx) error {
	if err := w.inbox.load(ctx, tx); err != nil {
		return err
	}
	return w.sent.load(ctx, tx)
}

// inChunks calls fn for consecutive ranges [lo, hi) of n items: whole
// chunks of inboxRows (for the prepared multi-row statements), then single
// items.
func inChunks(n int, fn func(lo, hi int) error) error {
	for lo := 0; lo < n; {
		hi := lo + 1
		if n-lo >= inboxRows {
			hi = lo + inboxRows
		}
		if err := fn(lo, hi); err != nil {
			return err
		}
		lo = hi
	}
	return nil
}

// dedup looks the keys up in sent and both sent logs, inboxRows keys per
// statement and the rest one by one, and appends the new ones to the
// active sent log.
func (w *preparedWriter) dedup(ctx context.Context, tx *sqlx.Tx, sent []sentRow) (map[dedupKey]int64, error) {
	look, lookOne := tx.StmtxContext(ctx, w.sentLook), tx.StmtxContext(ctx, w.sentLookOne)
	args := make([]any, 0, 3*inboxRows)
	out := map[dedupKey]int64{}
	err := inChunks(len(sent), func(lo, hi int) error {
		args = args[:0]
		for _, r := range sent[lo:hi] {
			args = append(args, r.key.sender, r.key.cmid)
		}
		st := lookOne
		if hi-lo > 1 {
			st = look
		}
		rows, err := st.QueryxContext(ctx, args...)
		return scanRows(rows, err, func(rows *sqlx.Rows) error {
			var k dedupKey
			var ms int64
			err := rows.Scan(&k.sender, &k.cmid, &ms)
			out[k] = ms
			return err
		})
	})
	if err != nil {
		return nil, err
	}
	fresh := make([]sentRow, 0, len(sent)-len(out))
	for _, r := range sent {
		if _, ok := out[r.key]; !ok {
			fresh = append(fresh, r)
		}
	}
	return out, w.sent.append(ctx, tx, len(fresh), func(lo, hi int) []any { return sentArgs(args[:0], fresh[lo:hi]) })
}

func (w *preparedWriter) allocSeqs(ctx context.Context, tx *sqlx.Tx, counts map[codec.UserID]int64, acks map[codec.UserID]codec.Seq) (map[codec.UserID]codec.Seq, error) {
	if len(acks) > 0 {
		ack := tx.StmtxContext(ctx, w.ack)
		for uid, seq := range acks {
			if _, err := ack.ExecContext(ctx, seq, uid, seq, seq); err != nil {
				return nil, err
			}
		}
	}
	next := make(map[codec.UserID]codec.Seq, len(counts))
	ids := sortedIDs(counts, nil)
	many, one := tx.StmtxContext(ctx, w.seqBumpMany), tx.StmtxContext(ctx, w.seqBump)
	args := make([]any, 0, 2*inboxRows)
	err := inChunks(len(ids), func(lo, hi int) error {
		if hi-lo == 1 {
			var last int64
			if err := one.QueryRowxContext(ctx, counts[ids[lo]], ids[lo]).Scan(&last); err != nil {
				return fmt.Errorf("store: seq of user %d: %w", ids[lo], err)
			}
			next[ids[lo]] = codec.Seq(last - counts[ids[lo]] + 1)
			return nil
		}
		args = args[:0]
		for _, id := range ids[lo:hi] {
			args = append(args, id, counts[id])
		}
		rows, err := many.QueryxContext(ctx, args...)
		return scanRows(rows, err, scanFirstSeqs(counts, next))
	})
	if err != nil {
		return nil, err
	}
	if len(next) != len(counts) {
		return nil, fmt.Errorf("store: seq allocation returned %d of %d users", len(next), len(counts))
	}
	return next, nil
}

func (w *preparedWriter) insertInbox(ctx context.Context, tx *sqlx.Tx, entries []service.Entry, created []int64) error {
	args := make([]any, 0, 9*inboxRows)
	return w.inbox.append(ctx, tx, len(entries), func(lo, hi int) []any {
		args = args[:0]
		for i := lo; i < hi; i++ {
			d := entries[i].Delivery
			args = append(args, entries[i].To, d.Seq, int(d.MsgID), d.ID, d.Name, d.ToID, d.GroupID, d.Msg, created[i])
		}
		return args
	})
}
