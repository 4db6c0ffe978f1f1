package store

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/service"
)

// chunkSizes are the row counts of the prepared multi-row statements,
// largest first. A commit's n rows take n/64 statements of 64 rows, then
// one statement for each bit set in the rest (23 rows: 16, 4, 2 and 1), so
// a small commit costs a few statements per kind, not one per row (with
// only 64- and 1-row statements, a commit of 16 messages ran 64 single-row
// statements: dedup lookup, sent log, seq bump and inbox log).
var chunkSizes = [...]int{64, 32, 16, 8, 4, 2, 1}

// sizedStmt is one statement prepared for each of chunkSizes.
type sizedStmt [len(chunkSizes)]*sqlx.Stmt

// preps lists the statements to prepare into s; query(n) is the one for n
// rows.
func (s *sizedStmt) preps(query func(n int) string) []prepStmt {
	out := make([]prepStmt, len(chunkSizes))
	for i, n := range chunkSizes {
		out[i] = prepStmt{&s[i], query(n)}
	}
	return out
}

// chunkFor returns the index in chunkSizes of the largest size not above n
// (n ≥ 1).
func chunkFor(n int) int {
	i := 0
	for chunkSizes[i] > n {
		i++
	}
	return i
}

// inChunks calls fn for consecutive ranges [lo, hi) of n rows, each as long
// as the largest chunk size that fits, with s's statement for that size
// bound to tx.
func (s *sizedStmt) inChunks(ctx context.Context, tx txn, n int, fn func(st *sqlx.Stmt, lo, hi int) error) error {
	for lo := 0; lo < n; {
		i := chunkFor(n - lo)
		hi := lo + chunkSizes[i]
		if err := fn(tx.stmt(ctx, s[i]), lo, hi); err != nil {
			return err
		}
		lo = hi
	}
	return nil
}

// preparedWriter is the SQLite sendWriter: statements prepared once and
// reused by every commit (database/sql re-binds them to the commit's
// connection), so no commit parses SQL. One-to-one rows and dedup keys go
// to the logs (sqlite_log.go); each commit copies a share of them into
// inbox and sent.
type preparedWriter struct {
	conn                   *writerConn // the statements below are prepared on it
	sentLook, seqBump, ack sizedStmt
	inbox, sent            *logMerger
	mem                    *sentMemory // the keys in the sent logs
	mergeRows              int64
	mergeEvery             time.Duration
}

func newPreparedWriter(ctx context.Context, db *sqlx.DB, retries *atomic.Int64, mergeRows int64, mergeEvery time.Duration) (*preparedWriter, error) {
	w := &preparedWriter{mem: newSentMemory(), mergeRows: mergeRows, mergeEvery: mergeEvery}
	var err error
	if w.conn, err = openWriterConn(ctx, db, retries, w.prepare); err != nil {
		return nil, err
	}
	return w, nil
}

// prepare prepares every statement of the writer on its connection p and
// returns what closes them.
func (w *preparedWriter) prepare(ctx context.Context, p preparer) (func(), error) {
	// A key sent before is in sent, or in a sent log (mem).
	preps := w.sentLook.preps(func(n int) string {
		return "WITH v (senderid, clientmsgid) AS (VALUES " + placeholders(n, "(?, ?)") + ") " +
			"SELECT t.senderid, t.clientmsgid, t.created_ms FROM v CROSS JOIN sent AS t " +
			"ON t.senderid = v.senderid AND t.clientmsgid = v.clientmsgid"
	})
	preps = append(preps, w.mem.preps()...)
	preps = append(preps, w.seqBump.preps(func(n int) string {
		return "UPDATE inbox_state SET last_seq = last_seq + v.column2 FROM (VALUES " + placeholders(n, "(?, ?)") +
			") AS v WHERE inbox_state.userid = v.column1 RETURNING userid, last_seq"
	})...)
	// An ack beyond last_seq is ignored.
	preps = append(preps, w.ack.preps(func(n int) string {
		return "UPDATE inbox_state SET acked_seq = v.column2 FROM (VALUES " + placeholders(n, "(?, ?)") +
			") AS v WHERE inbox_state.userid = v.column1 AND inbox_state.acked_seq < v.column2 AND inbox_state.last_seq >= v.column2"
	})...)
	closeOwn, err := prepareAll(ctx, p, preps)
	if err != nil {
		return nil, err
	}
	inbox, err := newLogMerger(ctx, p, inboxLog, w.mergeRows, w.mergeEvery, nil)
	if err != nil {
		closeOwn()
		return nil, err
	}
	sent, err := newLogMerger(ctx, p, sentLog, w.mergeRows, w.mergeEvery, w.mem)
	if err != nil {
		inbox.close()
		closeOwn()
		return nil, err
	}
	w.inbox, w.sent = inbox, sent
	return func() { closeOwn(); inbox.close(); sent.close() }, nil
}

// prepStmt is a statement to prepare into dst.
type prepStmt struct {
	dst   **sqlx.Stmt
	query string
}

// prepareAll prepares every statement of preps and returns what closes
// them; on an error it closes those it prepared.
func prepareAll(ctx context.Context, db preparer, preps []prepStmt) (func(), error) {
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

func (w *preparedWriter) close() { w.conn.close() }

// inTx runs fn on the writer's own connection (writerConn).
func (w *preparedWriter) inTx(ctx context.Context, _ *Store, fn func(txn) error, take func() uint64, skip func(uint64)) (uint64, error) {
	return w.conn.inTx(ctx, fn, take, skip)
}

// merge does this commit's share of copying log rows into inbox and sent
// (logMerger.step).
func (w *preparedWriter) merge(ctx context.Context, tx txn, inboxRows, sentRows int) error {
	now := time.Now()
	if err := w.inbox.step(ctx, tx, int64(inboxRows), now); err != nil {
		return err
	}
	if err := w.sent.step(ctx, tx, int64(sentRows), now); err != nil {
		return err
	}
	w.mem.gen = w.sent.st.Gen // the copy now goes with this commit's changes
	return nil
}

// begin implements sendWriter: where the logs are, and which keys the
// sent logs hold, as of this attempt.
func (w *preparedWriter) begin(ctx context.Context, tx txn) error {
	if err := w.inbox.load(ctx, tx); err != nil {
		return err
	}
	if err := w.sent.load(ctx, tx); err != nil {
		return err
	}
	return w.mem.verify(ctx, tx, w.sent.st.Gen)
}

// dedup looks the keys up in the sent logs (w.mem), then the others in
// sent, a chunk of keys per statement, and appends the new ones to the
// active sent log.
func (w *preparedWriter) dedup(ctx context.Context, tx txn, sent []sentRow) (map[dedupKey]int64, error) {
	out := map[dedupKey]int64{}
	ask := make([]sentRow, 0, len(sent))
	for _, r := range sent {
		if ms, ok := w.mem.lookup(r.key); ok {
			out[r.key] = ms
		} else {
			ask = append(ask, r)
		}
	}
	args := make([]any, 0, 3*chunkSizes[0])
	err := w.sentLook.inChunks(ctx, tx, len(ask), func(st *sqlx.Stmt, lo, hi int) error {
		args = args[:0]
		for _, r := range ask[lo:hi] {
			args = append(args, int64(r.key.sender), r.key.cmid)
		}
		rows, err := st.QueryxContext(ctx, args...)
		return scanRows(rows, err, func(rows rowScanner) error {
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
	if err := w.sent.append(ctx, tx, len(fresh), func(lo, hi int) []any { return sentArgs(args[:0], fresh[lo:hi]) }); err != nil {
		return nil, err
	}
	w.mem.appended(w.sent.st.Active, fresh)
	return out, nil
}

func (w *preparedWriter) allocSeqs(ctx context.Context, tx txn, counts map[codec.UserID]int64, acks map[codec.UserID]codec.Seq) (map[codec.UserID]codec.Seq, error) {
	args := make([]any, 0, 2*chunkSizes[0])
	if len(acks) > 0 {
		ids := sortedIDs(nil, acks)
		err := w.ack.inChunks(ctx, tx, len(ids), func(st *sqlx.Stmt, lo, hi int) error {
			return execRows(ctx, st, idValueArgs(args[:0], ids[lo:hi], acks)...)
		})
		if err != nil {
			return nil, err
		}
	}
	next := make(map[codec.UserID]codec.Seq, len(counts))
	ids := sortedIDs(counts, nil)
	err := w.seqBump.inChunks(ctx, tx, len(ids), func(st *sqlx.Stmt, lo, hi int) error {
		rows, err := st.QueryxContext(ctx, idValueArgs(args[:0], ids[lo:hi], counts)...)
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

// idValueArgs appends the (id, values[id]) pairs of ids, the rows of an
// UPDATE ... FROM (VALUES (?, ?), ...), as int64s (argument types).
func idValueArgs[V ~int64](args []any, ids []codec.UserID, values map[codec.UserID]V) []any {
	for _, id := range ids {
		args = append(args, int64(id), int64(values[id]))
	}
	return args
}

func (w *preparedWriter) insertInbox(ctx context.Context, tx txn, entries []service.Entry, created []int64) error {
	args := make([]any, 0, 9*chunkSizes[0])
	return w.inbox.append(ctx, tx, len(entries), func(lo, hi int) []any {
		args = inboxArgs(args[:0], entries[lo:hi], created[lo:hi])
		return args
	})
}
