package store

import (
	"context"
	"database/sql/driver"
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/jmoiron/sqlx"
)

// txn is what a group commit's statements run in: a database/sql
// transaction (sqlTx, MySQL), or the SQLite writer's own connection
// between its BEGIN IMMEDIATE and COMMIT (connTx).
type txn interface {
	sqlx.QueryerContext
	sqlx.ExecerContext
	// stmt returns st ready to run in this transaction.
	stmt(ctx context.Context, st *sqlx.Stmt) *sqlx.Stmt
}

// sqlTx is a *sqlx.Tx as a txn; statements prepared on the pool are bound
// to the transaction's connection.
type sqlTx struct{ *sqlx.Tx }

func (t sqlTx) stmt(ctx context.Context, st *sqlx.Stmt) *sqlx.Stmt { return t.StmtxContext(ctx, st) }

// connTx is a connection that runs its own BEGIN and COMMIT, as a txn:
// its statements were prepared on it, and run as they are.
type connTx struct{ *sqlx.Conn }

func (connTx) stmt(_ context.Context, st *sqlx.Stmt) *sqlx.Stmt { return st }

var (
	_ txn = sqlTx{}
	_ txn = connTx{}
)

// execRows runs st, a statement that returns no rows (no RETURNING), with
// args, through Query rather than Exec. mattn's Query binds every argument
// and takes the first step in one cgo call; its Exec makes one call per
// argument, nine per inbox row (docs/BENCHMARKS-history.md, "Changes in
// session 10"). Both SQLite drivers take that first step in Query, which
// runs such a statement to its end; draining and closing the rows resets
// it. It is for the SQLite writer's statements, which only the writer
// goroutine runs.
func execRows(ctx context.Context, st *sqlx.Stmt, args ...any) error {
	rows, err := st.QueryContext(ctx, args...)
	if err != nil {
		return err
	}
	for rows.Next() {
	}
	if err := rows.Close(); err != nil {
		return err
	}
	return rows.Err()
}

// writerConn is the SQLite writer's connection, held for the life of the
// store, with the statements prepared on it. It runs each commit between
// BEGIN IMMEDIATE and COMMIT itself instead of through a database/sql Tx: a
// Tx watches its context with a goroutine of its own, and every query run
// in it with one more (database/sql makes a Tx's context cancellable, and
// watches it even when the caller's is not). At 10,000 msg/s that was
// ~3,000 goroutines a second, each queued twice on the writer's P, ahead of
// the post-commit work (docs/BENCHMARKS-history.md, "Changes in session
// 9"). Only the writer goroutine uses it.
type writerConn struct {
	db     *sqlx.DB
	conn   *sqlx.Conn
	broken bool         // a BEGIN or ROLLBACK failed: replace conn first
	begins atomic.Int64 // BEGINs started, for tests
	// retries counts the transactions tried again (Store.retries).
	retries *atomic.Int64
	// prepare prepares the writer's statements on a new connection and
	// returns what closes them.
	prepare    func(ctx context.Context, p preparer) (func(), error)
	closeStmts func()
}

// preparer is what statements are prepared on: *sqlx.DB or *sqlx.Conn.
type preparer interface {
	PreparexContext(ctx context.Context, query string) (*sqlx.Stmt, error)
}

// openWriterConn takes a connection from db for the writer and prepares
// its statements on it; its retries go to retries.
func openWriterConn(ctx context.Context, db *sqlx.DB, retries *atomic.Int64, prepare func(context.Context, preparer) (func(), error)) (*writerConn, error) {
	w := &writerConn{db: db, retries: retries, prepare: prepare}
	if err := w.open(ctx); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *writerConn) open(ctx context.Context) error {
	conn, err := w.db.Connx(ctx)
	if err != nil {
		return fmt.Errorf("store: writer connection: %w", err)
	}
	closeStmts, err := w.prepare(ctx, conn)
	if err != nil {
		conn.Close()
		return err
	}
	w.conn, w.closeStmts, w.broken = conn, closeStmts, false
	return nil
}

// close closes the statements and ends the connection: a broken one is
// discarded, since it may still be inside a transaction (its ROLLBACK
// failed), and the pool would hand the same one back; a sound one goes
// back to the pool.
func (w *writerConn) close() {
	if w.conn == nil {
		return
	}
	w.closeStmts()
	if w.broken {
		_ = w.conn.Raw(func(any) error { return driver.ErrBadConn })
	}
	w.conn.Close()
	w.conn = nil
}

// inTx runs fn in a transaction on the writer's connection, like
// Store.inTxTicket (ticketedTx). A connection whose BEGIN or ROLLBACK
// failed (not for a busy database) is replaced, its statements prepared
// anew: a failed BEGIN is tried once more on the new one.
func (w *writerConn) inTx(ctx context.Context, fn func(txn) error, take func() uint64, skip func(uint64)) (uint64, error) {
	return ticketedTx(ctx, w.retries, func() (txn, func(commit bool) error, error) {
		if err := w.begin(ctx); err != nil {
			return nil, nil, err
		}
		return connTx{w.conn}, func(commit bool) error { return w.end(ctx, commit) }, nil
	}, fn, take, skip)
}

// end commits the transaction begun by begin, or rolls it back; a failed
// COMMIT is rolled back too (it may leave the transaction open).
func (w *writerConn) end(ctx context.Context, commit bool) error {
	if commit {
		_, err := w.conn.ExecContext(ctx, "COMMIT")
		if err == nil {
			return nil
		}
		w.rollback(ctx)
		return err
	}
	w.rollback(ctx)
	return nil
}

// begin runs BEGIN IMMEDIATE, on a new connection if the last one broke
// or this one fails (once).
func (w *writerConn) begin(ctx context.Context) error {
	for attempt := 0; ; attempt++ {
		if w.broken || w.conn == nil {
			w.close()
			if err := w.open(ctx); err != nil {
				return err
			}
		}
		w.begins.Add(1)
		_, err := w.conn.ExecContext(ctx, "BEGIN IMMEDIATE")
		if err == nil || isRetryable(err) {
			return err // a busy database leaves the connection as it was
		}
		w.broken = true
		if attempt > 0 {
			return err
		}
	}
}

// rollback ends a failed transaction. SQLite may have rolled it back
// already (after an I/O error or a full disk, say); then ROLLBACK fails
// with "no transaction is active", and the connection is fine.
func (w *writerConn) rollback(ctx context.Context) {
	_, err := w.conn.ExecContext(ctx, "ROLLBACK")
	if err != nil && !strings.Contains(err.Error(), "no transaction is active") {
		w.broken = true
	}
}
