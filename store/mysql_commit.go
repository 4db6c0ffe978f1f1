package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/service"
)

// errKeyStoredBefore: a send of the batch repeats a clientmsgid stored by an
// earlier commit. The two-round-trip commit leaves such a batch to the
// statement-by-statement one, which sorts the repeats out.
var errKeyStoredBefore = errors.New("store: a clientmsgid of the batch was stored before")

// commitMySQL commits a batch of sends on MySQL in two round trips (more
// when it exceeds maxTripBytes), on a connection of the writers' pool
// (multi-statement queries), retrying deadlocks as inTxTicket does: the
// first starts the transaction, records the clientmsgids (INSERT IGNORE; a
// key that inserts nothing was stored before) and reserves the seqs and
// gseqs, reading them back; the second inserts the inbox and group log rows
// and commits. take and skip are inTxTicket's: the ticket is taken just
// before the round trip that carries the COMMIT (the second, unless the
// rows take more than one), and skipped if that trip fails. The
// statement-by-statement path (storeBatch in a transaction) costs seven
// round trips for the same batch; it still commits batches that repeat a
// stored clientmsgid (errKeyStoredBefore) and, on MySQL, nothing else.
//
// Every lock is taken in the same order as on that path: sent keys sorted,
// inbox_state rows by user id, group_state rows by group id.
func (s *Store) commitMySQL(ctx context.Context, batch []*sendOp, take func() uint64, skip func(uint64)) (t uint64, results []service.SendResult, entries []service.Entry, err error) {
	err = retrying(ctx, &s.retries, func() error { // errKeyStoredBefore is not retried
		var err error
		t, results, entries, err = s.commitMySQLOnce(ctx, batch, take, skip)
		return err
	})
	if err != nil {
		return 0, nil, nil, err
	}
	return t, results, entries, nil
}

func (s *Store) commitMySQLOnce(ctx context.Context, batch []*sendOp, take func() uint64, skip func(uint64)) (t uint64, results []service.SendResult, entries []service.Entry, err error) {
	p := newBatchPlan(batch)
	if len(p.acks) > 0 || len(p.gacks) > 0 {
		// MySQL writes acknowledgements beside the commits (Ack).
		return 0, nil, nil, fmt.Errorf("store: acknowledgements in a MySQL group commit")
	}
	p.count(nil)
	conn, err := s.wdb.Conn(ctx)
	if err != nil {
		return 0, nil, nil, err
	}
	defer conn.Close()
	defer func() {
		if err != nil {
			abandon(conn) // runs before conn.Close
		}
	}()

	// Round trip 1.
	m := &multiStmt{ctx: ctx, conn: conn, max: s.tripBytes}
	m.exec("START TRANSACTION")
	stale := false
	keys := slices.SortedFunc(slices.Values(p.sent), compareSent)
	for start := 0; start < len(keys); start += chunk {
		part := keys[start:min(start+chunk, len(keys))]
		m.exec(insertSentQuery("INSERT IGNORE", len(part)), sentArgs(nil, part)...)
		m.query("SELECT ROW_COUNT()", func(rows rowScanner) error {
			var n int
			err := rows.Scan(&n)
			stale = stale || n != len(part)
			return err
		})
	}
	ids := sortedIDs(p.counts, nil)
	next := make(map[codec.UserID]codec.Seq, len(ids))
	for start := 0; start < len(ids); start += chunk {
		addSeqStmts(m, s.dialect.bumpSeq, s.dialect.forUpdate, ids[start:min(start+chunk, len(ids))], p.counts, nil, next)
	}
	gids := slices.Sorted(maps.Keys(p.gcounts))
	gnext := make(map[codec.GroupID]codec.Seq, len(gids))
	for _, g := range gids {
		addGroupSeqStmts(m, s.dialect.bumpGroup, s.dialect.forUpdate, g, p.gcounts[g], gnext)
	}
	if err = m.flush(); err != nil {
		return 0, nil, nil, err
	}
	if stale {
		return 0, nil, nil, errKeyStoredBefore
	}
	if len(next) != len(ids) || len(gnext) != len(gids) {
		return 0, nil, nil, fmt.Errorf("store: seq allocation returned %d of %d users, %d of %d groups", len(next), len(ids), len(gnext), len(gids))
	}

	// Round trip 2 carries the COMMIT. It waits for the server's answer
	// past the batch's deadline: a client that gives up while the trip is
	// under way cannot tell whether the server committed (it commits all
	// the same), and the sends would be reported failed with their rows
	// stored. A lock wait ends first, on the server (openWriterPool sets
	// innodb_lock_wait_timeout), and then nothing is committed.
	outcome, cancel := context.WithTimeout(context.WithoutCancel(ctx), commitOutcomeWait(s.cfg.QueryTimeout))
	defer cancel()
	m.ctx = outcome
	r := p.rows(next, gnext)
	for start := 0; start < len(r.inbox); start += chunk {
		end := min(start+chunk, len(r.inbox))
		m.exec(insertInboxQuery(end-start), inboxArgs(nil, r.inbox[start:end], r.created[start:end])...)
	}
	for start := 0; start < len(r.log); start += chunk {
		part := r.log[start:min(start+chunk, len(r.log))]
		m.exec(insertGroupLogQuery(len(part)), groupLogArgs(nil, part)...)
	}
	m.exec("COMMIT") // may send the rows before it first
	if err = m.err; err != nil {
		return 0, nil, nil, err
	}
	t = take()
	if err = m.flush(); err != nil {
		skip(t)
		return 0, nil, nil, err
	}
	return t, p.results, r.entries, nil
}

// commitOutcomeWait bounds the wait for the answer to a commit's last
// round trip: well past the session's lock wait (lockWaitSeconds), so that
// only a server stalled that long leaves the outcome unknown.
func commitOutcomeWait(queryTimeout time.Duration) time.Duration {
	return 2*time.Duration(lockWaitSeconds(queryTimeout))*time.Second + 5*time.Second
}

// lockWaitSeconds is the writers' session innodb_lock_wait_timeout: the
// query timeout, in whole seconds, at least 1.
func lockWaitSeconds(queryTimeout time.Duration) int {
	return max(1, int((queryTimeout+time.Second-1)/time.Second))
}

// abandon ends whatever transaction a failed commit left open on conn; if
// it cannot, the connection is dropped from the pool rather than reused.
func abandon(conn *sql.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := conn.ExecContext(ctx, "ROLLBACK"); err != nil {
		_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	}
}

// maxTripBytes bounds the statements and arguments multiStmt sends in one
// round trip (an estimate that counts every string escaped twice over),
// a quarter of MariaDB's default max_allowed_packet (16 MiB); a server with
// a smaller one gets half of it (openWriterPool). A larger batch takes more
// round trips; a statement larger than this goes alone, as on the
// statement-by-statement path.
const maxTripBytes = 4 << 20

// multiStmt sends statements on conn several at a time, as one
// multi-statement query per round trip (the connection must allow them;
// the driver interpolates the arguments). A statement added with query
// returns rows, which are read with its scan function, in order. Statements
// are sent when they reach max bytes (0: maxTripBytes), and at flush; after
// an error nothing more is sent, and flush returns it. The server stops at
// the first statement that fails.
type multiStmt struct {
	ctx   context.Context
	conn  *sql.Conn
	max   int
	sb    strings.Builder
	size  int
	args  []any
	scans []func(rowScanner) error
	err   error
	trips int // round trips made (count)
}

var _ stmtSink = (*multiStmt)(nil)

func (m *multiStmt) exec(query string, args ...any) { m.add(query, nil, args) }

func (m *multiStmt) query(query string, scan func(rowScanner) error, args ...any) {
	m.add(query, scan, args)
}

func (m *multiStmt) add(query string, scan func(rowScanner) error, args []any) {
	n := len(query) + 2
	for _, a := range args {
		if s, ok := a.(string); ok {
			n += 2*len(s) + 2 // escaped, quoted
		} else {
			n += 20
		}
	}
	limit := m.max
	if limit <= 0 {
		limit = maxTripBytes
	}
	if m.sb.Len() > 0 && m.size+n > limit {
		m.flush()
	}
	if m.sb.Len() > 0 {
		m.sb.WriteString("; ")
	}
	m.sb.WriteString(query)
	m.size += n
	m.args = append(m.args, args...)
	if scan != nil {
		m.scans = append(m.scans, scan)
	}
}

// flush sends what is left, and returns the first error.
func (m *multiStmt) flush() error {
	if m.err == nil && m.sb.Len() > 0 {
		m.err = m.send()
	}
	m.sb.Reset()
	m.size, m.args, m.scans = 0, nil, nil
	return m.err
}

func (m *multiStmt) send() error {
	m.trips++
	if len(m.scans) == 0 {
		_, err := m.conn.ExecContext(m.ctx, m.sb.String(), m.args...)
		return err
	}
	rows, err := m.conn.QueryContext(m.ctx, m.sb.String(), m.args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	// The driver skips results without columns (OK packets): each result
	// set is one query's.
	for i, scan := range m.scans {
		if i > 0 && !rows.NextResultSet() {
			if err := rows.Err(); err != nil {
				return err
			}
			return fmt.Errorf("store: %d of %d result sets", i, len(m.scans))
		}
		for rows.Next() {
			if err := scan(rows); err != nil {
				return err
			}
		}
		if err := rows.Err(); err != nil {
			return err
		}
	}
	for rows.NextResultSet() {
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return rows.Close()
}
