package store

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/service"
)

// TestSentMemoryFailedCommit: the keys of a commit that failed were in the
// writer's copy of the sent logs before the commit did; the next commit
// must not take them for sends stored earlier.
func TestSentMemoryFailedCommit(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, Config{DSN: "sqlite:" + filepath.Join(t.TempDir(), "chat.db")})
	a, b := mustUser(t, s, "a"), mustUser(t, s, "b")
	send := func(cmid string, to codec.UserID, ms int64) (service.SendResult, error) {
		return s.Send(ctx, service.SendRequest{From: a, FromName: "a", To: []codec.UserID{to}, ToUser: to,
			Body: cmid, ClientMsgID: cmid, UnixMilli: ms})
	}
	if _, err := send("stored", b, 1); err != nil {
		t.Fatal(err)
	}
	// One commit: a send to a user with no inbox fails it, and with it a
	// new key sent beside. Another connection holds the write lock while
	// a first send keeps the writer waiting, so both queue behind it and
	// go into the next batch together.
	path := strings.TrimPrefix(s.cfg.DSN, "sqlite:")
	raw, err := openSQLite("file:" + path + "?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	lock, err := raw.BeginTx(ctx, nil)
	if err == nil {
		_, err = lock.Exec("INSERT INTO settings (name, value) VALUES ('lock', x'00')")
	}
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var errs [3]error
	wg.Add(3)
	sendAsync := func(i int, cmid string, to codec.UserID) {
		s.SendAsync(ctx, service.SendRequest{From: a, FromName: "a", To: []codec.UserID{to}, ToUser: to,
			Body: cmid, ClientMsgID: cmid, UnixMilli: 2}, func(_ service.SendResult, err error) { errs[i] = err; wg.Done() })
	}
	begins := s.writer.(*preparedWriter).conn.begins.Load()
	sendAsync(0, "first", b)
	waitFor(t, 5*time.Second, "the writer to wait for the lock", func() bool { return s.writer.(*preparedWriter).conn.begins.Load() > begins })
	sendAsync(1, "lost", b)
	sendAsync(2, "nobody", 999999)
	waitFor(t, 5*time.Second, "two sends queued", func() bool { return len(s.batcher.lanes[0]) == 2 })
	if err := lock.Rollback(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if errs[0] != nil || errs[1] == nil || errs[2] == nil {
		t.Fatalf("send errors %v: want the first stored, the other two failed together", errs)
	}
	res, err := send("lost", b, 3)
	if err != nil || res.Duplicate {
		t.Fatalf("resend of a key whose commit failed: %+v %v, want stored as new", res, err)
	}
	if res, err := send("stored", b, 4); err != nil || !res.Duplicate || res.UnixMilli != 1 {
		t.Fatalf("resend of a stored key: %+v %v, want a duplicate of the send at 1", res, err)
	}
	checkInboxes(t, s, map[codec.UserID][]string{b: {"stored", "first", "lost"}})
}

// TestSentMemorySecondWriter: a second store on the same file (another
// process) appends keys to the sent logs and empties them; the first
// store's writer must see both.
func TestSentMemorySecondWriter(t *testing.T) {
	cfg := Config{DSN: "sqlite:" + filepath.Join(t.TempDir(), "chat.db"), MergeRows: 4}
	s1 := openStore(t, cfg)
	a, b := mustUser(t, s1, "a"), mustUser(t, s1, "b")
	send := func(s *Store, cmid string, ms int64) service.SendResult {
		t.Helper()
		return sendKey(t, s, a, b, cmid, ms)
	}
	send(s1, "one", 1)
	s2 := openStore(t, cfg) // copies and empties the logs s1 appended to
	send(s2, "two", 2)      // into a log s1 last saw empty
	for _, k := range []struct {
		cmid string
		ms   int64
	}{{"one", 1}, {"two", 2}} {
		if res := send(s1, k.cmid, 10); !res.Duplicate || res.UnixMilli != k.ms {
			t.Fatalf("resend of %s through the first store: %+v, want a duplicate of the send at %d", k.cmid, res, k.ms)
		}
	}
	// Enough sends through both to freeze, copy and empty logs.
	for i := range 12 {
		s := s1
		if i%2 == 1 {
			s = s2
		}
		if res := send(s, string(rune('A'+i)), int64(100+i)); res.Duplicate {
			t.Fatalf("send %d: a new key taken for a duplicate", i)
		}
	}
	for i := range 12 {
		if res := send(s1, string(rune('A'+i)), 500); !res.Duplicate || res.UnixMilli != int64(100+i) {
			t.Fatalf("resend %d: %+v, want a duplicate of the send at %d", i, res, 100+i)
		}
	}
	if n := logRows(t, s1, sentLog); n >= 14 {
		t.Fatalf("sent logs hold %d rows: never copied", n)
	}
}

// TestSentMemoryFreezeWithoutKeys: a commit that only freezes a log (its
// sends all resends, its copy share not reaching the end of the log)
// writes the log state too, and must draw a new gen like any other: with
// two stores on the file, a gen written twice would let one of them keep a
// stale copy and take a key in a frozen log for a new one.
func TestSentMemoryFreezeWithoutKeys(t *testing.T) {
	// MergeRows 8: a copy share of 1 row past what the commit appended (a
	// sender's keys whole up to twice that).
	cfg := Config{DSN: "sqlite:" + filepath.Join(t.TempDir(), "chat.db"), MergeRows: 8, MergeInterval: 50 * time.Millisecond}
	s1 := openStore(t, cfg)
	s2 := openStore(t, cfg)
	a, b := mustUser(t, s1, "a"), mustUser(t, s1, "b")
	send := func(s *Store, cmid string, ms int64) service.SendResult {
		t.Helper()
		return sendKey(t, s, a, b, cmid, ms)
	}
	send(s1, "k1a", 1)
	send(s1, "k1b", 1)
	time.Sleep(60 * time.Millisecond)
	if res := send(s1, "k1a", 2); !res.Duplicate { // no new key: freezes k1's log, copies none of it
		t.Fatalf("resend of k1a: %+v", res)
	}
	send(s2, "k2a", 3) // copies and empties k1's log, appends to the other
	send(s2, "k2b", 3)
	send(s2, "k2c", 3)
	time.Sleep(60 * time.Millisecond)
	if res := send(s2, "k2a", 4); !res.Duplicate { // no new key: freezes k2's log, copies k2a only
		t.Fatalf("resend of k2a through the second store: %+v", res)
	}
	if n := logRows(t, s1, sentLog); n != 3 {
		t.Fatalf("sent logs hold %d keys, want k2a, k2b and k2c, frozen", n)
	}
	for _, k := range []string{"k2a", "k2b", "k2c"} {
		if res := send(s1, k, 5); !res.Duplicate || res.UnixMilli != 3 {
			t.Fatalf("resend of %s through the first store: %+v, want a duplicate of the send at 3", k, res)
		}
	}
}

// sendKey sends a message from a to b through s, with clientmsgid and
// body cmid, sent at ms.
func sendKey(t *testing.T, s *Store, a, b codec.UserID, cmid string, ms int64) service.SendResult {
	t.Helper()
	res, err := s.Send(context.Background(), service.SendRequest{From: a, FromName: "a", To: []codec.UserID{b}, ToUser: b,
		Body: cmid, ClientMsgID: cmid, UnixMilli: ms})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestSentMemoryRanges: a range takes whole senders while they fit in the
// share (a first sender with up to twice the share whole), and cuts inside
// a sender only when it is the range's first and has more than twice the
// share from there on.
func TestSentMemoryRanges(t *testing.T) {
	m := newSentMemory()
	var rows []sentRow
	for sender, keys := range map[codec.UserID]string{1: "ab", 2: "abcdefgh", 3: "x", 4: "vwxyz"} {
		for _, k := range keys {
			rows = append(rows, sentRow{key: dedupKey{sender, string(k)}})
		}
	}
	m.appended(0, rows)
	steps := []struct {
		from, to logPos
		ok       bool
	}{
		{logStart, logPos{Key: 2}, true},                             // sender 1 whole; 2 does not fit after it
		{logPos{Key: 2}, logPos{Key: 2, Cmid: "d"}, true},            // 2 alone is more than twice 3: cut inside it
		{logPos{Key: 2, Cmid: "b"}, logPos{Key: 2, Cmid: "e"}, true}, // likewise from inside it (7 keys left)
		{logPos{Key: 2, Cmid: "c"}, logPos{Key: 3}, true},            // 6 keys left, twice 3: whole
		{logPos{Key: 2, Cmid: "f"}, logPos{Key: 3}, true},            // f, g, h fit; 3 does not fit after them
		{logPos{Key: 3}, logPos{Key: 4}, true},                       // 3 fits, 4 does not after it
		{logPos{Key: 4}, logPos{Key: 5}, true},                       // 4 whole (5 keys), the end of the log
		{logPos{Key: 4, Cmid: "x"}, logPos{}, false},                 // 3 keys left: the last range
		{logPos{Key: 5}, logPos{}, false},
	}
	for _, st := range steps {
		to, ok, err := m.boundary(context.Background(), nil, 0, st.from, 3)
		if err != nil || ok != st.ok || to != st.to {
			t.Errorf("boundary from %+v: %+v %v %v, want %+v %v", st.from, to, ok, err, st.to, st.ok)
		}
	}
}
