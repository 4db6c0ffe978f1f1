package store

import (
	"context"
	"fmt"

	"github.com/jmoiron/sqlx"

	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/service"
)

// inboxRows is the row count of the prepared multi-row inbox insert.
const inboxRows = 64

// preparedWriter is the SQLite sendWriter: statements prepared once and
// reused by every commit (database/sql re-binds them to the commit's
// connection), so no commit parses SQL.
type preparedWriter struct {
	sentIns, sentMany, sentSel, seqBump, seqBumpMany, ack, inboxOne, inboxMany *sqlx.Stmt
}

func newPreparedWriter(ctx context.Context, db *sqlx.DB) (*preparedWriter, error) {
	w := &preparedWriter{}
	inbox := "INSERT INTO inbox (userid, seq, kind, fromid, fromname, toid, groupid, body, created_ms) VALUES "
	row := "(?, ?, ?, ?, ?, ?, ?, ?, ?)"
	for _, p := range []struct {
		dst   **sqlx.Stmt
		query string
	}{
		{&w.sentIns, "INSERT OR IGNORE INTO sent (senderid, clientmsgid, created_ms) VALUES (?, ?, ?)"},
		{&w.sentMany, "INSERT OR IGNORE INTO sent (senderid, clientmsgid, created_ms) VALUES " +
			placeholders(inboxRows, "(?, ?, ?)") + " RETURNING senderid, clientmsgid"},
		{&w.sentSel, "SELECT created_ms FROM sent WHERE senderid = ? AND clientmsgid = ?"},
		{&w.seqBump, "UPDATE inbox_state SET last_seq = last_seq + ? WHERE userid = ? RETURNING last_seq"},
		{&w.seqBumpMany, "UPDATE inbox_state SET last_seq = last_seq + v.column2 FROM (VALUES " +
			placeholders(inboxRows, "(?, ?)") + ") AS v WHERE inbox_state.userid = v.column1 RETURNING userid, last_seq"},
		{&w.ack, "UPDATE inbox_state SET acked_seq = ? WHERE userid = ? AND acked_seq < ? AND last_seq >= ?"},
		{&w.inboxOne, inbox + row},
		{&w.inboxMany, inbox + placeholders(inboxRows, row)},
	} {
		st, err := db.PreparexContext(ctx, p.query)
		if err != nil {
			w.close()
			return nil, fmt.Errorf("store: prepare: %w", err)
		}
		*p.dst = st
	}
	return w, nil
}

func (w *preparedWriter) close() {
	for _, st := range []*sqlx.Stmt{w.sentIns, w.sentMany, w.sentSel, w.seqBump, w.seqBumpMany, w.ack, w.inboxOne, w.inboxMany} {
		if st != nil {
			st.Close()
		}
	}
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

// dedup records each new key with INSERT OR IGNORE, inboxRows keys per
// statement (RETURNING names the rows it inserted) and the rest one by one:
// a key that inserts nothing was sent before, and its stored time is read
// back.
func (w *preparedWriter) dedup(ctx context.Context, tx *sqlx.Tx, sent []sentRow) (map[dedupKey]int64, error) {
	many, one := tx.StmtxContext(ctx, w.sentMany), tx.StmtxContext(ctx, w.sentIns)
	args := make([]any, 0, 3*inboxRows)
	inserted := make(map[dedupKey]bool, len(sent))
	err := inChunks(len(sent), func(lo, hi int) error {
		args = sentArgs(args[:0], sent[lo:hi])
		if hi-lo == 1 {
			res, err := one.ExecContext(ctx, args...)
			if err != nil {
				return err
			}
			n, err := res.RowsAffected()
			inserted[sent[lo].key] = n == 1
			return err
		}
		rows, err := many.QueryxContext(ctx, args...)
		return scanRows(rows, err, func(rows *sqlx.Rows) error {
			var k dedupKey
			err := rows.Scan(&k.sender, &k.cmid)
			inserted[k] = true
			return err
		})
	})
	if err != nil {
		return nil, err
	}
	out := map[dedupKey]int64{}
	sel := tx.StmtxContext(ctx, w.sentSel)
	for _, r := range sent {
		if inserted[r.key] {
			continue
		}
		var ms int64
		if err := sel.GetContext(ctx, &ms, r.key.sender, r.key.cmid); err != nil {
			return nil, err
		}
		out[r.key] = ms
	}
	return out, nil
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
	many, one := tx.StmtxContext(ctx, w.inboxMany), tx.StmtxContext(ctx, w.inboxOne)
	args := make([]any, 0, 9*inboxRows)
	return inChunks(len(entries), func(lo, hi int) error {
		args = args[:0]
		for i := lo; i < hi; i++ {
			d := entries[i].Delivery
			args = append(args, entries[i].To, d.Seq, int(d.MsgID), d.ID, d.Name, d.ToID, d.GroupID, d.Msg, created[i])
		}
		st := one
		if hi-lo > 1 {
			st = many
		}
		_, err := st.ExecContext(ctx, args...)
		return err
	})
}
