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

// dedup records each new key with INSERT OR IGNORE, inboxRows keys per
// statement (RETURNING names the rows it inserted) and the rest one by one:
// a key that inserts nothing was sent before, and its stored time is read
// back.
func (w *preparedWriter) dedup(ctx context.Context, tx *sqlx.Tx, keys []dedupKey, times []int64) (map[dedupKey]int64, error) {
	out := map[dedupKey]int64{}
	var old []dedupKey
	many := tx.StmtxContext(ctx, w.sentMany)
	args := make([]any, 0, 3*inboxRows)
	inserted := make(map[dedupKey]bool, inboxRows)
	for len(keys) >= inboxRows {
		args = args[:0]
		for i, k := range keys[:inboxRows] {
			args = append(args, k.sender, k.cmid, times[i])
		}
		rows, err := many.QueryxContext(ctx, args...)
		if err != nil {
			return nil, err
		}
		clear(inserted)
		for rows.Next() {
			var k dedupKey
			if err := rows.Scan(&k.sender, &k.cmid); err != nil {
				rows.Close()
				return nil, err
			}
			inserted[k] = true
		}
		if err := rows.Close(); err != nil {
			return nil, err
		}
		if err := rows.Err(); err != nil {
			return nil, err
		}
		for _, k := range keys[:inboxRows] {
			if !inserted[k] {
				old = append(old, k)
			}
		}
		keys, times = keys[inboxRows:], times[inboxRows:]
	}
	ins := tx.StmtxContext(ctx, w.sentIns)
	for i, k := range keys {
		res, err := ins.ExecContext(ctx, k.sender, k.cmid, times[i])
		if err != nil {
			return nil, err
		}
		if n, err := res.RowsAffected(); err != nil || n == 1 {
			if err != nil {
				return nil, err
			}
			continue
		}
		old = append(old, k)
	}
	sel := tx.StmtxContext(ctx, w.sentSel)
	for _, k := range old {
		var ms int64
		if err := sel.GetContext(ctx, &ms, k.sender, k.cmid); err != nil {
			return nil, err
		}
		out[k] = ms
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
	many := tx.StmtxContext(ctx, w.seqBumpMany)
	args := make([]any, 0, 2*inboxRows)
	for len(ids) >= inboxRows {
		args = args[:0]
		for _, id := range ids[:inboxRows] {
			args = append(args, id, counts[id])
		}
		rows, err := many.QueryxContext(ctx, args...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var id, last int64
			if err := rows.Scan(&id, &last); err != nil {
				rows.Close()
				return nil, err
			}
			uid := codec.UserID(id)
			next[uid] = codec.Seq(last - counts[uid] + 1)
		}
		if err := rows.Close(); err != nil {
			return nil, err
		}
		if err := rows.Err(); err != nil {
			return nil, err
		}
		ids = ids[inboxRows:]
	}
	bump := tx.StmtxContext(ctx, w.seqBump)
	for _, id := range ids {
		var last int64
		if err := bump.QueryRowxContext(ctx, counts[id], id).Scan(&last); err != nil {
			return nil, fmt.Errorf("store: seq of user %d: %w", id, err)
		}
		next[id] = codec.Seq(last - counts[id] + 1)
	}
	if len(next) != len(counts) {
		return nil, fmt.Errorf("store: seq allocation returned %d of %d users", len(next), len(counts))
	}
	return next, nil
}

func (w *preparedWriter) insertInbox(ctx context.Context, tx *sqlx.Tx, entries []service.Entry, created []int64) error {
	many, one := tx.StmtxContext(ctx, w.inboxMany), tx.StmtxContext(ctx, w.inboxOne)
	args := make([]any, 0, 9*inboxRows)
	for start := 0; start < len(entries); {
		n := 1
		if len(entries)-start >= inboxRows {
			n = inboxRows
		}
		args = args[:0]
		for i := start; i < start+n; i++ {
			d := entries[i].Delivery
			args = append(args, entries[i].To, d.Seq, int(d.MsgID), d.ID, d.Name, d.ToID, d.GroupID, d.Msg, created[i])
		}
		st := one
		if n == inboxRows {
			st = many
		}
		if _, err := st.ExecContext(ctx, args...); err != nil {
			return err
		}
		start += n
	}
	return nil
}
