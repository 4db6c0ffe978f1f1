package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/service"
)

// openMySQL opens a store on a fresh MariaDB database; it skips without one
// (MySQLTestDSN fails instead when CHAT_REQUIRE_SERVICES=1).
func openMySQL(t *testing.T) *Store {
	t.Helper()
	dsn := MySQLTestDSN(t)
	if dsn == "" {
		t.Skip("CHAT_TEST_MYSQL_DSN is not set")
	}
	return openStore(t, Config{DSN: dsn})
}

// commitDirect runs the two-round-trip commit on ops, outside the batcher,
// and checks its tickets: one taken, and skipped exactly when the commit
// failed after taking it; and that no transaction stays open on the
// commits' connections.
func commitDirect(t *testing.T, s *Store, reqs ...service.SendRequest) ([]service.SendResult, []service.Entry, error) {
	t.Helper()
	batch := make([]*sendOp, len(reqs))
	for i, r := range reqs {
		batch[i] = &sendOp{req: r}
	}
	taken, skipped := 0, 0
	take := func() uint64 { taken++; return uint64(taken) }
	skip := func(tk uint64) {
		if tk != uint64(taken) {
			t.Errorf("skipped ticket %d, took %d", tk, taken)
		}
		skipped++
	}
	_, res, entries, err := s.commitMySQL(context.Background(), batch, take, skip)
	switch {
	case err == nil && (taken != 1 || skipped != 0):
		t.Errorf("a commit took %d tickets and skipped %d", taken, skipped)
	case err != nil && taken != skipped:
		t.Errorf("a failed commit took %d tickets and skipped %d", taken, skipped)
	}
	// Both of the pool's connections at once: neither is inside a
	// transaction.
	ctx := context.Background()
	for range s.cfg.Writers {
		c, err := s.wdb.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var in int
		if err := c.QueryRowContext(ctx, "SELECT @@in_transaction").Scan(&in); err != nil || in != 0 {
			t.Errorf("@@in_transaction = %d (%v) after a commit", in, err)
		}
	}
	return res, entries, err
}

// TestCommitMySQL covers the two-round-trip commit itself: new one-to-one
// and group sends, a batch that repeats a stored clientmsgid (handed back
// untouched), a batch whose second round trip fails (rolled back, the
// connection reused), and a batch larger than one round trip takes.
func TestCommitMySQL(t *testing.T) {
	s := openMySQL(t)
	ctx := context.Background()
	a, b := mustUser(t, s, "ma"), mustUser(t, s, "mb")
	gid, err := s.CreateGroup(ctx, a, "g", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	one := func(cmid string, ms int64) service.SendRequest {
		return service.SendRequest{From: a, FromName: "ma", To: []codec.UserID{b}, ToUser: b, Body: "hi " + cmid, ClientMsgID: cmid, UnixMilli: ms}
	}
	group := service.SendRequest{From: a, FromName: "ma", To: []codec.UserID{b}, Group: gid, Body: "all", ClientMsgID: "g1", UnixMilli: 5}
	state := func() codec.Seq {
		t.Helper()
		last, _, err := s.InboxState(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		return last
	}

	res, entries, err := commitDirect(t, s, one("k1", 1), one("k2", 2), one("k1", 3), group)
	if err != nil {
		t.Fatal(err)
	}
	want := []service.SendResult{{UnixMilli: 1}, {UnixMilli: 2}, {UnixMilli: 1, Duplicate: true}, {UnixMilli: 5, GSeq: 1}}
	if fmt.Sprint(res) != fmt.Sprint(want) {
		t.Fatalf("results %+v, want %+v", res, want)
	}
	if len(entries) != 4 || entries[0].Delivery.Seq != 1 || entries[1].Delivery.Seq != 2 || entries[2].Delivery.GSeq != 1 {
		t.Fatalf("entries %+v", entries)
	}
	if last := state(); last != 2 {
		t.Fatalf("last_seq %d after two new messages", last)
	}
	if log, err := s.GroupLog(ctx, gid, 0, 10); err != nil || len(log) != 1 || log[0].Msg != "all" {
		t.Fatalf("group log %+v (%v)", log, err)
	}

	// A stored key: nothing of the batch stays, not even its new key.
	if _, _, err := commitDirect(t, s, one("k3", 6), one("k2", 7)); !errors.Is(err, errKeyStoredBefore) {
		t.Fatalf("a stored key: %v", err)
	}
	if last := state(); last != 2 {
		t.Fatalf("last_seq %d after a batch handed back", last)
	}
	var n int
	if err := s.DB().Get(&n, "SELECT COUNT(*) FROM sent WHERE clientmsgid = 'k3'"); err != nil || n != 0 {
		t.Fatalf("k3 stored %d times (%v) by a batch handed back", n, err)
	}

	// The second round trip fails: b's next seq is taken already.
	if _, err := s.DB().Exec("INSERT INTO inbox (userid, seq, kind, fromid, fromname, toid, groupid, body, created_ms) VALUES (?, 3, 5, ?, 'x', ?, 0, 'rogue', 0)", b, a, b); err != nil {
		t.Fatal(err)
	}
	if _, _, err := commitDirect(t, s, one("k4", 8)); err == nil || !isConflict(err) {
		t.Fatalf("a taken seq: %v, want a duplicate key error", err)
	}
	if _, err := s.DB().Exec("DELETE FROM inbox WHERE userid = ? AND seq = 3", b); err != nil {
		t.Fatal(err)
	}
	// Rolled back: had the transaction stayed open, the next START
	// TRANSACTION on the connection would have committed k4 and seq 3.
	res, _, err = commitDirect(t, s, one("k4", 9))
	if err != nil || res[0].Duplicate || res[0].UnixMilli != 9 {
		t.Fatalf("k4 after the failed commit: %+v, %v", res, err)
	}
	if last := state(); last != 3 {
		t.Fatalf("last_seq %d, want 3", last)
	}

	// Over maxTripBytes: 1,500 messages of 4 KiB, ~12 MiB escaped.
	body := strings.Repeat("x", 4096)
	var big []service.SendRequest
	for i := range 1500 {
		r := one(fmt.Sprintf("big%d", i), 10)
		r.Body = body
		big = append(big, r)
	}
	if res, _, err := commitDirect(t, s, big...); err != nil || len(res) != len(big) {
		t.Fatalf("large batch: %d results, %v", len(res), err)
	}
	if last := state(); last != 3+1500 {
		t.Fatalf("last_seq %d after the large batch, want %d", last, 3+1500)
	}
}

// TestMultiStmtTrips checks that multiStmt reads every result set in order
// and splits at maxTripBytes.
func TestMultiStmtTrips(t *testing.T) {
	s := openMySQL(t)
	ctx := context.Background()
	conn, err := s.wdb.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	m := &multiStmt{ctx: ctx, conn: conn}
	big := strings.Repeat("y", maxTripBytes/8)
	var got []int
	for i := range 12 { // 12 arguments of 512 KiB: several round trips
		m.exec("DO ?", big)
		m.query("SELECT ?", func(r rowScanner) error {
			var v int
			err := r.Scan(&v)
			got = append(got, v)
			return err
		}, i)
	}
	if err := m.flush(); err != nil {
		t.Fatal(err)
	}
	if m.trips < 2 || fmt.Sprint(got) != fmt.Sprint([]int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}) {
		t.Fatalf("%d round trips, results %v", m.trips, got)
	}
	// A failure after a result set was read, in a query trip and in an
	// exec trip: the error comes back, the statements after it do not run,
	// and it sticks.
	if _, err := conn.ExecContext(ctx, "CREATE TEMPORARY TABLE probe (v INT)"); err != nil {
		t.Fatal(err)
	}
	first := false
	m = &multiStmt{ctx: ctx, conn: conn}
	m.query("SELECT 1", func(rowScanner) error { first = true; return nil })
	m.query("SELECT * FROM no_such_table", func(rowScanner) error { return nil })
	m.exec("INSERT INTO probe VALUES (1)")
	if err := m.flush(); err == nil || !first {
		t.Fatalf("query trip: %v, first result read: %v", err, first)
	}
	m = &multiStmt{ctx: ctx, conn: conn}
	m.exec("INSERT INTO probe VALUES (2)")
	m.exec("INSERT INTO no_such_table VALUES (3)")
	m.exec("INSERT INTO probe VALUES (4)")
	if err := m.flush(); err == nil {
		t.Fatal("exec trip: no error from a missing table")
	}
	m.exec("INSERT INTO probe VALUES (5)")
	if err := m.flush(); err == nil {
		t.Fatal("the error did not stick")
	}
	var vals []int
	rows, err := conn.QueryContext(ctx, "SELECT v FROM probe ORDER BY v")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		vals = append(vals, v)
	}
	rows.Close()
	if fmt.Sprint(vals) != "[2]" {
		t.Fatalf("probe holds %v, want [2]: only the statement before the failed one ran", vals)
	}
}

// openMySQLSnapshot opens a store whose connections run with
// innodb_snapshot_isolation=ON, MariaDB's default from 11.6.2, where
// this test server may predate it (10.6.18 and 10.11.8 have it, off).
// Without the variable (MySQL, older MariaDB) the store runs as it is.
func openMySQLSnapshot(t *testing.T) *Store {
	t.Helper()
	dsn := MySQLTestDSN(t)
	if dsn == "" {
		t.Skip("CHAT_TEST_MYSQL_DSN is not set")
	}
	probe := openStore(t, Config{DSN: dsn})
	var v string
	if err := probe.DB().Get(&v, "SELECT @@innodb_snapshot_isolation"); err != nil {
		t.Logf("the server has no innodb_snapshot_isolation (%v); testing without it", err)
		return probe
	}
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	s := openStore(t, Config{DSN: dsn + sep + "innodb_snapshot_isolation=ON"})
	for _, db := range []interface {
		Get(any, string, ...any) error
	}{s.DB(), s.wdb} {
		if err := db.Get(&v, "SELECT @@session.innodb_snapshot_isolation"); err != nil || (v != "1" && v != "ON") {
			t.Fatalf("session innodb_snapshot_isolation %q (%v)", v, err)
		}
	}
	return s
}

// otherNodeCommit starts, on its own transaction, another node's commit of
// a message to group gid (its group_state row locked) and returns the
// function that commits it. A test that fails before it commits rolls it
// back, so that what waits for it ends.
func otherNodeCommit(t *testing.T, s *Store, gid codec.GroupID, from codec.UserID) (commit func()) {
	t.Helper()
	tx, err := s.DB().BeginTxx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback() }) // sql.ErrTxDone once committed
	if _, err := tx.Exec(mysqlDialect.bumpGroup, gid, 1); err != nil {
		t.Fatal(err)
	}
	var last int64
	if err := tx.Get(&last, "SELECT last_seq FROM group_state WHERE groupid = ?", gid); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(insertGroupLogQuery(1), gid, last, from, "other", "from the other node", 1); err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := tx.Commit(); err != nil {
			t.Error(err)
		}
	}
}

// waitLockWait waits until a transaction on s's server waits for a row
// lock (Innodb_row_lock_current_waits, a live count: the INNODB_TRX view
// is a cache up to ~100 ms old, which still showed a wait that had
// ended). The only transaction that can wait is the one under test.
func waitLockWait(t *testing.T, s *Store) {
	t.Helper()
	waitFor(t, 10*time.Second, "a transaction waiting for a row lock", func() bool {
		var name string
		var n int64
		err := s.DB().QueryRowx("SHOW GLOBAL STATUS LIKE 'Innodb_row_lock_current_waits'").Scan(&name, &n)
		return err == nil && n > 0
	})
}

// TestSnapshotIsolation: with innodb_snapshot_isolation on, a group commit
// that waits for another node's commit to the same group, and a join to
// that group, go through once the other commits, and without a retry: the
// reads in their transactions before their last locking statement are
// locking ones, so no snapshot predates the row they wait for (error 1020
// otherwise, which retrying would hide). The statement-by-statement path
// (a repeated clientmsgid) must go through too, retried or not.
func TestSnapshotIsolation(t *testing.T) {
	s := openMySQLSnapshot(t)
	ctx := context.Background()
	noRetries := func(what string, before int64) {
		t.Helper()
		if n := s.retries.Load() - before; n != 0 {
			t.Errorf("%s: retried %d times: a read before the lock wait is not a locking one", what, n)
		}
	}
	a, b, c := mustUser(t, s, "a"), mustUser(t, s, "b"), mustUser(t, s, "c")
	gid, err := s.CreateGroup(ctx, a, "g", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.JoinGroup(ctx, gid, b, 0, 0); err != nil {
		t.Fatal(err)
	}

	// A batch of a one-to-one and a group message, on the multi-statement
	// path and on the statement-by-statement one (a repeated clientmsgid).
	for _, cmid := range []string{"", "k1"} {
		if cmid != "" {
			if _, err := s.Send(ctx, service.SendRequest{From: a, FromName: "a", To: []codec.UserID{b}, ToUser: b, Body: "before", ClientMsgID: cmid, UnixMilli: 1}); err != nil {
				t.Fatal(err)
			}
		}
		commit := otherNodeCommit(t, s, gid, b)
		errs := make(chan error, 2)
		batch := []*sendOp{ // one batch: its inbox_state read comes first
			{req: service.SendRequest{From: a, FromName: "a", To: []codec.UserID{b}, ToUser: b, Body: "dm", ClientMsgID: cmid, UnixMilli: 2}},
			{req: service.SendRequest{From: a, FromName: "a", To: []codec.UserID{b}, Group: gid, Body: "grp", UnixMilli: 2}},
		}
		for _, op := range batch {
			op.done = func(_ service.SendResult, err error) { errs <- err }
		}
		before := s.retries.Load()
		go s.batcher.commit(batch, len(batch))
		waitLockWait(t, s) // the batch waits for the group's row
		commit()
		for range batch {
			if err := <-errs; err != nil {
				t.Errorf("clientmsgid %q: a batch beside another node's commit to its group: %v", cmid, err)
			}
		}
		if cmid == "" {
			noRetries("multi-statement batch", before)
		}
	}

	commit := otherNodeCommit(t, s, gid, b)
	joined := make(chan error, 1)
	before := s.retries.Load()
	go func() { _, err := s.JoinGroup(ctx, gid, c, 0, 0); joined <- err }()
	waitLockWait(t, s)
	commit()
	if err := <-joined; err != nil {
		t.Errorf("a join beside another node's commit to the group: %v", err)
	}
	noRetries("join", before)
	if entries, err := s.GroupLog(ctx, gid, 0, 100); err != nil || len(entries) != 5 {
		t.Errorf("group log: %d entries (%v), want 5", len(entries), err)
	}
}

// TestCommitOutcomeDefinite: a send whose commit waits past the query
// timeout for a lock (another transaction gap-locks the recipient's inbox)
// is reported as it ends on the server: failed with nothing stored when
// the server's lock wait runs out first, stored when the lock is released
// before that. (A client that gave up at its deadline would report it
// failed while the server committed it.)
func TestCommitOutcomeDefinite(t *testing.T) {
	dsn := MySQLTestDSN(t)
	if dsn == "" {
		t.Skip("CHAT_TEST_MYSQL_DSN is not set")
	}
	ctx := context.Background()
	s := openStore(t, Config{DSN: dsn, QueryTimeout: 700 * time.Millisecond}) // lock wait 1 s
	a := mustUser(t, s, "a")
	for _, tc := range []struct {
		name    string
		release time.Duration // when the other transaction lets go
		stored  bool
	}{
		{"released after the query timeout, before the lock wait ends", 850 * time.Millisecond, true},
		{"held past the lock wait", 2500 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := mustUser(t, s, "x"+strconv.Itoa(int(tc.release.Milliseconds())))
			if _, err := s.Send(ctx, service.SendRequest{From: a, To: []codec.UserID{x}, ToUser: x, Body: "m0", UnixMilli: 1}); err != nil {
				t.Fatal(err)
			}
			// The commit's first round trip passes (inbox_state is free);
			// its INSERT INTO inbox waits for this gap lock.
			tx, err := s.DB().BeginTxx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback()
			var n int
			if err := tx.Get(&n, "SELECT COUNT(*) FROM inbox WHERE userid = ? AND seq > 0 FOR UPDATE", x); err != nil {
				t.Fatal(err)
			}
			time.AfterFunc(tc.release, func() { tx.Rollback() })
			_, sendErr := s.Send(ctx, service.SendRequest{From: a, To: []codec.UserID{x}, ToUser: x, Body: "m1", ClientMsgID: "m1-" + tc.name, UnixMilli: 2})
			time.Sleep(tc.release + 500*time.Millisecond) // whatever the server still does is done
			rows, err := s.Inbox(ctx, x, 0, 10)
			if err != nil {
				t.Fatal(err)
			}
			stored := len(rows) == 2
			if (sendErr == nil) != stored || stored != tc.stored {
				t.Fatalf("send reported %v, message stored %v; want stored %v and reported so", sendErr, stored, tc.stored)
			}
		})
	}
}
