package store

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/service"
)

// logRows counts the rows in both logs of l.
func logRows(t *testing.T, s *Store, l logSpec) int {
	t.Helper()
	var n int
	if err := s.DB().Get(&n, "SELECT (SELECT COUNT(*) FROM "+l.name(0)+") + (SELECT COUNT(*) FROM "+l.name(1)+")"); err != nil {
		t.Fatal(err)
	}
	return n
}

// checkInboxes asserts that each user's inbox reads back as seqs 1..n in
// order, each once, with the body sent at that seq, whole and in pages
// that cross from the merged table into the logs.
func checkInboxes(t *testing.T, s *Store, bodies map[codec.UserID][]string) {
	t.Helper()
	ctx := context.Background()
	for uid, want := range bodies {
		got, err := s.Inbox(ctx, uid, 0, 10000)
		if err != nil || len(got) != len(want) {
			t.Fatalf("inbox of %d: %d entries, want %d (%v)", uid, len(got), len(want), err)
		}
		for i, d := range got {
			if d.Seq != codec.Seq(i+1) || d.Msg != want[i] {
				t.Fatalf("inbox of %d entry %d: seq %d %q, want %d %q", uid, i, d.Seq, d.Msg, i+1, want[i])
			}
		}
		if last, _, err := s.InboxState(ctx, uid); err != nil || last != codec.Seq(len(want)) {
			t.Fatalf("last seq of %d: %d (%v), want %d", uid, last, err, len(want))
		}
		if len(want) > 6 {
			page, err := s.Inbox(ctx, uid, 3, 3)
			if err != nil || len(page) != 3 || page[0].Seq != 4 || page[2].Seq != 6 {
				t.Fatalf("inbox page of %d after 3: %+v (%v)", uid, page, err)
			}
		}
	}
}

// splitAt reports whether the frozen log of pair l (the active one is
// active) holds rows of key both before sub and from sub on.
func splitAt(t *testing.T, s *Store, l logSpec, active int, key int64, sub any) bool {
	t.Helper()
	var before, from int
	q := "SELECT COUNT(*) FROM " + l.name(1-active) + " WHERE " + l.key + " = ? AND " + l.sub
	if err := s.DB().Get(&before, q+" < ?", key, sub); err != nil {
		t.Fatal(err)
	}
	if err := s.DB().Get(&from, q+" >= ?", key, sub); err != nil {
		t.Fatal(err)
	}
	return before > 0 && from > 0
}

// TestSQLiteLogMerge sends through many small commits with a tiny merge
// threshold, so rows sit in the logs, in a frozen log being merged, in the
// tables, and in both: every read in between must see each message once,
// dedup must find keys wherever they are, and a reopened store must have
// moved everything out of the logs.
func TestSQLiteLogMerge(t *testing.T) {
	ctx := context.Background()
	dsn := "sqlite:" + filepath.Join(t.TempDir(), "chat.db")
	cfg := Config{DSN: dsn, MergeRows: 16, MergeInterval: time.Hour}
	s, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var users []codec.UserID
	for i := range 7 {
		users = append(users, mustUser(t, s, fmt.Sprintf("u%d", i)))
	}
	bodies := map[codec.UserID][]string{}
	sentAt := map[string]int64{}
	// Half the messages come from users[0], and the other half go to
	// users[1]: each holds more than twice a commit's share of rows in a
	// frozen log, so their rows are copied over several commits.
	sender := func(i int) codec.UserID {
		if i%2 == 1 {
			return users[0]
		}
		return users[i%len(users)]
	}
	send := func(i int) {
		from, to := sender(i), users[(i*3+1)%len(users)]
		if i%2 == 0 {
			to = users[1]
		}
		cmid := fmt.Sprintf("c%d", i)
		res, err := s.Send(ctx, service.SendRequest{From: from, FromName: "u", To: []codec.UserID{to}, ToUser: to,
			Body: fmt.Sprintf("m%d", i), ClientMsgID: cmid, UnixMilli: int64(1000 + i)})
		if err != nil || res.Duplicate {
			t.Fatalf("send %d: %+v %v", i, res, err)
		}
		bodies[to] = append(bodies[to], fmt.Sprintf("m%d", i))
		sentAt[cmid] = res.UnixMilli
	}
	// Every read must see each message once, also while a frozen log is
	// copied range by range (some rows in a log and in inbox at once).
	// No commit copies more than twice its share: one message appended,
	// so 1*5/4 + MergeRows/8 = 3 rows of each log (logMerger.step), and a
	// range's first user whole only up to twice that, even users[0] and
	// users[1].
	tableRows := func(table string) int {
		var n int
		if err := s.DB().Get(&n, "SELECT COUNT(*) FROM "+table); err != nil {
			t.Fatal(err)
		}
		return n
	}
	var midCopy, inBoth, midUser, midSender int
	inboxBefore, sentBefore := tableRows("inbox"), tableRows("sent")
	for i := range 300 {
		send(i)
		inboxNow, sentNow := tableRows("inbox"), tableRows("sent")
		if inboxNow-inboxBefore > 6 || sentNow-sentBefore > 6 {
			t.Fatalf("send %d: one commit copied %d inbox and %d sent rows, want at most 6 each",
				i, inboxNow-inboxBefore, sentNow-sentBefore)
		}
		inboxBefore, sentBefore = inboxNow, sentNow
		// The next range starts inside users[1]'s rows in the frozen inbox
		// log, or inside users[0]'s keys in the frozen sent log.
		var pos struct {
			Active int    `db:"active"`
			Key    int64  `db:"from_key"`
			Seq    int64  `db:"from_seq"`
			Cmid   string `db:"from_cmid"`
		}
		const state = "SELECT active, from_key, from_seq, from_cmid FROM log_state WHERE merging AND name = ?"
		if err := s.DB().Get(&pos, state, inboxLog.log); err == nil && pos.Key == int64(users[1]) &&
			splitAt(t, s, inboxLog, pos.Active, pos.Key, pos.Seq) {
			midUser++
		}
		if err := s.DB().Get(&pos, state, sentLog.log); err == nil && pos.Key == int64(users[0]) &&
			splitAt(t, s, sentLog, pos.Active, pos.Key, pos.Cmid) {
			midSender++
		}
		var st struct {
			Merging bool  `db:"merging"`
			From    int64 `db:"from_key"`
		}
		if err := s.DB().Get(&st, "SELECT merging, from_key FROM log_state WHERE name = 'inbox_log'"); err != nil {
			t.Fatal(err)
		}
		var both int
		if err := s.DB().Get(&both, "SELECT (SELECT COUNT(*) FROM inbox_log0 JOIN inbox USING (userid, seq)) + "+
			"(SELECT COUNT(*) FROM inbox_log1 JOIN inbox USING (userid, seq))"); err != nil {
			t.Fatal(err)
		}
		if st.Merging && st.From > math.MinInt64 {
			midCopy++
		}
		if both > 0 {
			inBoth++
		}
		if i%10 == 9 || st.Merging || both > 0 {
			checkInboxes(t, s, bodies)
		}
	}
	if midCopy == 0 || inBoth == 0 || midUser == 0 || midSender == 0 {
		t.Fatalf("reads never happened mid-copy (%d), with rows in a log and in inbox (%d), or with users[1]'s rows (%d) or users[0]'s keys (%d) copied in part",
			midCopy, inBoth, midUser, midSender)
	}
	if n := logRows(t, s, inboxLog); n >= 300 {
		t.Fatalf("inbox logs hold %d rows: never emptied", n)
	}
	var copied int
	if err := s.DB().Get(&copied, "SELECT COUNT(*) FROM sent"); err != nil || copied == 0 || logRows(t, s, sentLog)+copied < 300 {
		t.Fatalf("%d keys copied into sent (%v), %d in the logs: want all 300, some copied", copied, err, logRows(t, s, sentLog))
	}
	// A retry finds its key merged long ago, or still in a log; a batch
	// of retries (one commit) finds them all.
	var wg sync.WaitGroup
	for _, i := range []int{0, 1, 150, 298, 299} {
		wg.Add(1)
		cmid := fmt.Sprintf("c%d", i)
		s.SendAsync(ctx, service.SendRequest{From: sender(i), FromName: "u", To: []codec.UserID{users[0]},
			ToUser: users[0], Body: "retry", ClientMsgID: cmid, UnixMilli: 99999}, func(res service.SendResult, err error) {
			defer wg.Done()
			if err != nil || !res.Duplicate || res.UnixMilli != sentAt[cmid] {
				t.Errorf("retry of %s: %+v %v, want duplicate at %d", cmid, res, err, sentAt[cmid])
			}
		})
	}
	wg.Wait()
	checkInboxes(t, s, bodies)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Reopened: everything is in the tables, nothing in the logs.
	if s, err = Open(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if a, b := logRows(t, s, inboxLog), logRows(t, s, sentLog); a != 0 || b != 0 {
		t.Fatalf("after reopen the logs hold %d inbox and %d sent rows", a, b)
	}
	var n int
	if err := s.DB().Get(&n, "SELECT COUNT(*) FROM inbox"); err != nil || n != 300 {
		t.Fatalf("inbox rows after reopen: %d (%v)", n, err)
	}
	checkInboxes(t, s, bodies)
	if res, err := s.Send(ctx, service.SendRequest{From: users[0], FromName: "u", To: []codec.UserID{users[1]},
		ToUser: users[1], Body: "again", ClientMsgID: "c0", UnixMilli: 5}); err != nil || !res.Duplicate || res.UnixMilli != sentAt["c0"] {
		t.Fatalf("retry after reopen: %+v %v", res, err)
	}
}

// TestSQLiteLogMergeInterval: below MergeRows, rows stay in the log until
// MergeInterval has passed since the store opened (or the logs last
// swapped), and are copied then.
func TestSQLiteLogMergeInterval(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, Config{DSN: "sqlite:" + filepath.Join(t.TempDir(), "chat.db"), MergeInterval: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	opened := time.Now()
	a, b := mustUser(t, s, "a"), mustUser(t, s, "b")
	inboxRows := func() int {
		var n int
		if err := s.DB().Get(&n, "SELECT COUNT(*) FROM inbox"); err != nil {
			t.Fatal(err)
		}
		return n
	}
	bodies := map[codec.UserID][]string{}
	send := func(body string) {
		if _, err := s.Send(ctx, service.SendRequest{From: a, FromName: "a", To: []codec.UserID{b}, ToUser: b,
			Body: body, ClientMsgID: body, UnixMilli: 1}); err != nil {
			t.Fatal(err)
		}
		bodies[b] = append(bodies[b], body)
	}
	send("early")
	n, early := inboxRows(), time.Since(opened)
	if early >= 3*time.Second {
		t.Fatalf("the first send came %v after the store opened, past its merge interval: nothing to check", early)
	}
	if n != 0 {
		t.Fatalf("%d rows copied before the interval", n)
	}
	checkInboxes(t, s, bodies)
	time.Sleep(time.Until(opened.Add(3100 * time.Millisecond)))
	send("late")
	if n := inboxRows(); n != 2 {
		t.Fatalf("%d rows copied after the interval, want 2", n)
	}
	checkInboxes(t, s, bodies)
}

// TestSQLiteLogCrashLeftovers: rows a crashed store left in the logs (its
// memory gone) are in the tables once the store opens again: readable in
// the inbox, and found by dedup.
func TestSQLiteLogCrashLeftovers(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "chat.db")
	s, err := Open(ctx, Config{DSN: "sqlite:" + path})
	if err != nil {
		t.Fatal(err)
	}
	a, b := mustUser(t, s, "a"), mustUser(t, s, "b")
	if _, err := s.Send(ctx, service.SendRequest{From: a, FromName: "a", To: []codec.UserID{b}, ToUser: b,
		Body: "one", ClientMsgID: "k1", UnixMilli: 7}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// What a crash leaves: two more messages and their keys, in both
	// pairs of logs (an active log, and a frozen one not copied yet), and
	// the seqs they were given.
	raw, err := openSQLite("file:" + path)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []struct {
		query string
		args  []any
	}{
		{"INSERT INTO inbox_log1 (" + inboxLog.cols + ") VALUES (?, 2, 5, ?, 'a', ?, 0, 'two', 8)", []any{b, a, b}},
		{"INSERT INTO inbox_log0 (" + inboxLog.cols + ") VALUES (?, 3, 5, ?, 'a', ?, 0, 'three', 9)", []any{b, a, b}},
		{"INSERT INTO sent_log0 (" + sentLog.cols + ") VALUES (?, 'k2', 8)", []any{a}},
		{"INSERT INTO sent_log1 (" + sentLog.cols + ") VALUES (?, 'k3', 9)", []any{a}},
		{"UPDATE inbox_state SET last_seq = 3 WHERE userid = ?", []any{b}},
	} {
		if _, err := raw.Exec(q.query, q.args...); err != nil {
			t.Fatalf("%s: %v", q.query, err)
		}
	}
	raw.Close()
	s, err = Open(ctx, Config{DSN: "sqlite:" + path})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n := logRows(t, s, inboxLog) + logRows(t, s, sentLog); n != 0 {
		t.Fatalf("logs hold %d rows after open", n)
	}
	checkInboxes(t, s, map[codec.UserID][]string{b: {"one", "two", "three"}})
	for k, ms := range map[string]int64{"k1": 7, "k2": 8, "k3": 9} {
		res, err := s.Send(ctx, service.SendRequest{From: a, FromName: "a", To: []codec.UserID{b}, ToUser: b,
			Body: "retry", ClientMsgID: k, UnixMilli: 100})
		if err != nil || !res.Duplicate || res.UnixMilli != ms {
			t.Fatalf("retry of %s: %+v %v, want a duplicate of the send at %d", k, res, err, ms)
		}
	}
}

// TestLogRanges walks random frozen logs range by range with random
// shares, the same keys through an inbox log (indexedLog, SQL) and a sent
// log (sentMemory): each range's copy adds as many rows as the range
// holds (none copied twice), every row is copied, a range other than the
// last is never empty nor more than twice its share, the last is at most
// its share, and both sources cut the same ranges.
func TestLogRanges(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, Config{DSN: "sqlite:" + filepath.Join(t.TempDir(), "chat.db")})
	m, err := newLogMerger(ctx, s.db, inboxLog, 1<<20, time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.close()
	idx := m.src.(*indexedLog)
	mem := newSentMemory()
	closeMem, err := prepareAll(ctx, s.db, mem.preps())
	if err != nil {
		t.Fatal(err)
	}
	defer closeMem()
	type row struct {
		key, seq int64
		cmid     string
	}
	inboxPos := func(r row) logPos { return logPos{Key: r.key, Seq: r.seq} }
	sentPos := func(r row) logPos { return logPos{Key: r.key, Cmid: r.cmid} }
	less := func(a, b logPos) bool {
		return cmp.Or(cmp.Compare(a.Key, b.Key), cmp.Compare(a.Seq, b.Seq), cmp.Compare(a.Cmid, b.Cmid)) < 0
	}
	// in counts the rows from from on, up to to unless last.
	in := func(rows []row, pos func(row) logPos, from, to logPos, last bool) int {
		n := 0
		for _, r := range rows {
			if p := pos(r); !less(p, from) && (last || less(p, to)) {
				n++
			}
		}
		return n
	}
	count := func(tx *sqlx.Tx, table string) int {
		var n int
		if err := tx.Get(&n, "SELECT COUNT(*) FROM "+table); err != nil {
			t.Fatal(err)
		}
		return n
	}
	rng := rand.New(rand.NewPCG(13, 5))
	for run := range 300 {
		tx := s.DB().MustBeginTx(ctx, nil)
		defer tx.Rollback() // if a check fails before the run's own Rollback
		var rows []row
		var keys []sentRow
		for u := range rng.IntN(6) {
			base := rng.Int64N(50)
			for k := range rng.Int64N(20) {
				r := row{int64(u+1) * 10, base + k, fmt.Sprintf("c%03d", base+k)}
				rows = append(rows, r)
				keys = append(keys, sentRow{key: dedupKey{codec.UserID(r.key), r.cmid}})
				tx.MustExec("INSERT INTO inbox_log1 (userid, seq, kind, fromid, fromname, toid, groupid, body, created_ms) VALUES (?, ?, 1, 1, 'a', ?, 0, 'm', 0)",
					r.key, r.seq, r.key)
			}
		}
		mem.cleared(1)
		mem.appended(1, keys)
		from, sfrom := logStart, logStart
		copied := 0
		for step := 0; ; step++ {
			if step > len(rows)+2 {
				t.Fatalf("run %d: no end after %d steps", run, step)
			}
			q := int64(1 + rng.IntN(6))
			b, ok, err := idx.boundary(ctx, sqlTx{tx}, 1, from, q)
			sb, sok, serr := mem.boundary(ctx, sqlTx{tx}, 1, sfrom, q)
			if err != nil || serr != nil {
				t.Fatal(err, serr)
			}
			n, sn := in(rows, inboxPos, from, b, !ok), in(rows, sentPos, sfrom, sb, !sok)
			if ok != sok || n != sn {
				t.Fatalf("run %d step %d, share %d: inbox range from %+v to %+v (%v) holds %d, sent from %+v to %+v (%v) %d",
					run, step, q, from, b, ok, n, sfrom, sb, sok, sn)
			}
			if ok && (n == 0 || n > int(2*q)) || !ok && n > int(q) {
				t.Fatalf("run %d step %d: a range of %d rows with share %d (last: %v)", run, step, n, q, !ok)
			}
			inboxBefore, sentBefore := count(tx, "inbox"), count(tx, "sent")
			if err := idx.copyRange(ctx, sqlTx{tx}, 1, from, b, !ok); err != nil {
				t.Fatal(err)
			}
			if err := mem.copyRange(ctx, sqlTx{tx}, 1, sfrom, sb, !sok); err != nil {
				t.Fatal(err)
			}
			if a, b := count(tx, "inbox")-inboxBefore, count(tx, "sent")-sentBefore; a != n || b != n {
				t.Fatalf("run %d step %d: a range of %d rows copied %d inbox rows and %d sent keys", run, step, n, a, b)
			}
			copied += n
			if !ok {
				break
			}
			from, sfrom = b, sb
		}
		if copied != len(rows) {
			t.Fatalf("run %d: %d of %d rows copied", run, copied, len(rows))
		}
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestMergeStateFrom: a position inside a user's rows holds only while
// from_sub_key names that user; an older binary moves from_key on alone,
// and the position is then the start of from_key's rows.
func TestMergeStateFrom(t *testing.T) {
	var st mergeState
	st.setFrom(logPos{Key: 7, Seq: 37, Cmid: "c37"})
	if got := st.from(); got != (logPos{Key: 7, Seq: 37, Cmid: "c37"}) {
		t.Fatalf("from %+v", got)
	}
	st.From = 9 // as an older binary leaves it
	if got := st.from(); got != (logPos{Key: 9, Seq: math.MinInt64}) {
		t.Fatalf("from after an older binary: %+v, want the start of 9", got)
	}
}
