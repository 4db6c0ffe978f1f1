package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/service"
)

// backends returns the DSNs every DAO test runs against: a fresh SQLite file
// and, when CHAT_TEST_MYSQL_DSN is set, a fresh MariaDB database (required
// when CHAT_REQUIRE_SERVICES=1).
func backends(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{"sqlite": "sqlite:" + filepath.Join(t.TempDir(), "chat.db")}
	if dsn := MySQLTestDSN(t); dsn != "" {
		out["mysql"] = dsn
	}
	return out
}

// MySQLTestDSN creates a private database on the server named by
// CHAT_TEST_MYSQL_DSN and returns its "mysql:" DSN, dropped when t ends. It
// returns "" when the variable is unset, unless CHAT_REQUIRE_SERVICES=1.
func MySQLTestDSN(t testing.TB) string {
	t.Helper()
	base := os.Getenv("CHAT_TEST_MYSQL_DSN")
	if base == "" {
		if os.Getenv("CHAT_REQUIRE_SERVICES") == "1" {
			t.Fatal("CHAT_REQUIRE_SERVICES=1 but CHAT_TEST_MYSQL_DSN is not set")
		}
		return ""
	}
	cfg, err := mysql.ParseDSN(base)
	if err != nil {
		t.Fatalf("CHAT_TEST_MYSQL_DSN: %v", err)
	}
	var b [6]byte
	rand.Read(b[:])
	name := "chat_t_" + hex.EncodeToString(b[:])
	cfg.DBName = ""
	admin, err := sql.Open("mysql", cfg.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec("CREATE DATABASE " + name + " CHARACTER SET utf8mb4"); err != nil {
		admin.Close()
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		admin.Exec("DROP DATABASE IF EXISTS " + name)
		admin.Close()
	})
	cfg.DBName = name
	return "mysql:" + cfg.FormatDSN()
}

func forEachBackend(t *testing.T, fn func(t *testing.T, s *Store)) {
	for name, dsn := range backends(t) {
		t.Run(name, func(t *testing.T) {
			s, err := Open(context.Background(), Config{DSN: dsn})
			if err != nil {
				t.Fatalf("open %s: %v", name, err)
			}
			t.Cleanup(func() { s.Close() })
			fn(t, s)
		})
	}
}

// openStore opens a store on cfg, closed when t ends.
func openStore(t testing.TB, cfg Config) *Store {
	t.Helper()
	s, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("open %s: %v", cfg.DSN, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func mustUser(t testing.TB, s *Store, name string) codec.UserID {
	t.Helper()
	id, err := s.CreateUser(context.Background(), name, []byte("hash-"+name))
	if err != nil {
		t.Fatalf("create user %s: %v", name, err)
	}
	return id
}

func TestUsers(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		a := mustUser(t, s, "alice")
		b := mustUser(t, s, "Alice") // names are case-sensitive on both drivers
		if a == b || a <= 0 {
			t.Fatalf("ids %d %d", a, b)
		}
		if _, err := s.CreateUser(ctx, "alice", []byte("x")); !errors.Is(err, service.ErrConflict) {
			t.Fatalf("duplicate name: %v", err)
		}
		u, err := s.User(ctx, a)
		if err != nil || u.Name != "alice" || string(u.PasswordHash) != "hash-alice" || u.TokenVersion != 0 {
			t.Fatalf("user = %+v, %v", u, err)
		}
		if err := s.BumpTokenVersion(ctx, a); err != nil {
			t.Fatal(err)
		}
		if u, _ := s.User(ctx, a); u.TokenVersion != 1 {
			t.Fatalf("token version %d", u.TokenVersion)
		}
		if _, err := s.User(ctx, 9999); !errors.Is(err, service.ErrNotFound) {
			t.Fatalf("missing user: %v", err)
		}
		s1, err := s.Secret(ctx)
		if err != nil || len(s1) != 32 {
			t.Fatalf("secret %x %v", s1, err)
		}
		if s2, _ := s.Secret(ctx); string(s1) != string(s2) {
			t.Fatal("secret changed")
		}
	})
}

func TestFriendsAndGroups(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		a, b, c := mustUser(t, s, "a"), mustUser(t, s, "b"), mustUser(t, s, "c")
		if err := s.AddFriend(ctx, a, b, 0); err != nil {
			t.Fatal(err)
		}
		if err := s.AddFriend(ctx, a, b, 0); !errors.Is(err, service.ErrConflict) {
			t.Fatalf("again: %v", err)
		}
		if err := s.AddFriend(ctx, b, a, 0); !errors.Is(err, service.ErrConflict) {
			t.Fatalf("reverse: %v", err)
		}
		if err := s.AddFriend(ctx, a, 777, 0); !errors.Is(err, service.ErrNotFound) {
			t.Fatalf("missing: %v", err)
		}
		fb, err := s.Friends(ctx, b)
		if err != nil || len(fb) != 1 || fb[0].ID != a || fb[0].Name != "a" {
			t.Fatalf("friends of b: %+v %v", fb, err)
		}
		g, err := s.CreateGroup(ctx, a, "g1", "first", 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.CreateGroup(ctx, b, "g1", "dup", 0); !errors.Is(err, service.ErrConflict) {
			t.Fatalf("dup group: %v", err)
		}
		if _, err := s.JoinGroup(ctx, g, c, 0, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := s.JoinGroup(ctx, g, c, 0, 0); !errors.Is(err, service.ErrConflict) {
			t.Fatalf("join twice: %v", err)
		}
		if _, err := s.JoinGroup(ctx, 999, c, 0, 0); !errors.Is(err, service.ErrNotFound) {
			t.Fatalf("join missing: %v", err)
		}
		m, err := s.GroupMembers(ctx, g)
		if err != nil || len(m) != 2 || m[0].ID != a || m[0].Role != codec.RoleCreator || m[1].ID != c || m[1].Role != codec.RoleNormal {
			t.Fatalf("members %+v %v", m, err)
		}
		if _, err := s.GroupMembers(ctx, 999); !errors.Is(err, service.ErrNotFound) {
			t.Fatalf("members of missing: %v", err)
		}
		gs, err := s.UserGroups(ctx, c)
		if err != nil || len(gs) != 1 || gs[0].Name != "g1" || gs[0].Desc != "first" || gs[0].Size != 2 {
			t.Fatalf("groups %+v %v", gs, err)
		}
		byGroup, err := s.GroupMembersOf(ctx, []codec.GroupID{g, 999})
		if err != nil || len(byGroup) != 1 || len(byGroup[g]) != 2 || byGroup[g][0].ID != a || byGroup[g][1].ID != c {
			t.Fatalf("GroupMembersOf: %+v %v", byGroup, err)
		}
		// A user in no group: an empty list, as the LOGIN_ACK's "groups": [].
		if gs, err := s.UserGroups(ctx, b); err != nil || gs == nil || len(gs) != 0 {
			t.Fatalf("groups of a user in none: %#v %v", gs, err)
		}
	})
}

// TestLoginReadsBatched: many users' login reads at once, batched
// (readBatcher), each get the user's own row, friends, groups (with their
// members) and inbox state, and a missing user reads as not found.
func TestLoginReadsBatched(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		const n = 40
		ids := make([]codec.UserID, n)
		for i := range ids {
			ids[i] = mustUser(t, s, fmt.Sprintf("u%d", i))
		}
		// User i befriends i+1 and i+2; users 0..9 are in group g0 (its
		// creator 0), users 5..14 in g5; user i has i inbox entries.
		for i := range ids {
			for _, j := range []int{i + 1, i + 2} {
				if j < n {
					if err := s.AddFriend(ctx, ids[i], ids[j], 0); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		g0, err := s.CreateGroup(ctx, ids[0], "g0", "d0", 0)
		if err != nil {
			t.Fatal(err)
		}
		g5, err := s.CreateGroup(ctx, ids[5], "g5", "d5", 0)
		if err != nil {
			t.Fatal(err)
		}
		for i := 1; i < 15; i++ {
			for _, g := range []struct {
				id       codec.GroupID
				from, to int
			}{{g0, 1, 10}, {g5, 6, 15}} {
				if i >= g.from && i < g.to {
					if _, err := s.JoinGroup(ctx, g.id, ids[i], 0, 0); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		for i := 1; i < 6; i++ {
			for k := 0; k < i; k++ {
				if _, err := s.Send(ctx, service.SendRequest{From: ids[0], FromName: "u0", To: []codec.UserID{ids[i]}, ToUser: ids[i], Body: "m", UnixMilli: 1}); err != nil {
					t.Fatal(err)
				}
			}
		}
		want := func(i int) (friends []codec.UserID, groups []codec.GroupID, last codec.Seq) {
			for _, j := range []int{i - 2, i - 1, i + 1, i + 2} {
				if j >= 0 && j < n {
					friends = append(friends, ids[j])
				}
			}
			if i < 10 {
				groups = append(groups, g0)
			}
			if i >= 5 && i < 15 {
				groups = append(groups, g5)
			}
			if i > 0 && i < 6 {
				last = codec.Seq(i)
			}
			return friends, groups, last
		}
		var wg sync.WaitGroup
		for round := 0; round < 3; round++ {
			for i := range ids {
				wg.Add(1)
				go func() {
					defer wg.Done()
					wf, wgs, wl := want(i)
					u, err := s.User(ctx, ids[i])
					if err != nil || u.ID != ids[i] || u.Name != fmt.Sprintf("u%d", i) || string(u.PasswordHash) != fmt.Sprintf("hash-u%d", i) {
						t.Errorf("user %d: %+v %v", i, u, err)
					}
					fs, err := s.Friends(ctx, ids[i])
					got := []codec.UserID{}
					for _, f := range fs {
						got = append(got, f.ID)
					}
					slices.Sort(wf)
					if err != nil || !slices.Equal(got, wf) {
						t.Errorf("friends of %d: %v, want %v (%v)", i, got, wf, err)
					}
					gs, err := s.UserGroups(ctx, ids[i])
					var gids []codec.GroupID
					for _, g := range gs {
						gids = append(gids, g.ID)
						if size := map[codec.GroupID]int{g0: 10, g5: 10}[g.ID]; g.Size != size {
							t.Errorf("group %d of %d: size %d, want %d", g.ID, i, g.Size, size)
						}
					}
					byGroup, merr := s.GroupMembersOf(ctx, gids)
					for _, g := range gids {
						if len(byGroup[g]) != 10 {
							t.Errorf("members of group %d for %d: %d, want 10 (%v)", g, i, len(byGroup[g]), merr)
						}
					}
					if err != nil || gs == nil || !slices.Equal(gids, wgs) {
						t.Errorf("groups of %d: %v, want %v (%v)", i, gids, wgs, err)
					}
					last, acked, err := s.InboxState(ctx, ids[i])
					if err != nil || last != wl || acked != 0 {
						t.Errorf("inbox state of %d: %d %d, want %d 0 (%v)", i, last, acked, wl, err)
					}
				}()
			}
		}
		wg.Wait()
		if _, err := s.User(ctx, 1<<40); !errors.Is(err, service.ErrNotFound) {
			t.Fatalf("missing user: %v", err)
		}
	})
}

// hookEntries records what the store hands its commit hook.
type hookEntries struct {
	mu  sync.Mutex
	got []service.Entry
}

func recordHook(s *Store) *hookEntries {
	h := &hookEntries{}
	s.SetCommitHook(func(e []service.Entry) {
		h.mu.Lock()
		h.got = append(h.got, e...)
		h.mu.Unlock()
	})
	return h
}

// entries returns a copy of what the hook got so far.
func (h *hookEntries) entries() []service.Entry {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.got)
}

func TestSendSeqAndDedup(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		const senders, perSender = 8, 40
		to := mustUser(t, s, "rcpt")
		other := mustUser(t, s, "other")
		hook := recordHook(s)
		var wg sync.WaitGroup
		errs := make(chan error, senders*perSender)
		for i := 0; i < senders; i++ {
			from := mustUser(t, s, fmt.Sprintf("s%d", i))
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := 0; j < perSender; j++ {
					_, err := s.Send(ctx, service.SendRequest{
						From: from, FromName: "x", To: []codec.UserID{to, other}, ToUser: to,
						Body: fmt.Sprintf("m%d", j), ClientMsgID: fmt.Sprintf("s:%d", j), UnixMilli: time.Now().UnixMilli(),
					})
					if err != nil {
						errs <- err
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		for _, uid := range []codec.UserID{to, other} {
			got, err := s.Inbox(ctx, uid, 0, 10000)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != senders*perSender {
				t.Fatalf("inbox of %d has %d entries", uid, len(got))
			}
			for i, d := range got {
				if d.Seq != codec.Seq(i+1) || d.MsgID != codec.MsgOneChat || d.ToID != to || d.GSeq != 0 {
					t.Fatalf("entry %d = %+v", i, d)
				}
			}
			last, acked, err := s.InboxState(ctx, uid)
			if err != nil || last != senders*perSender || acked != 0 {
				t.Fatalf("state %d %d %v", last, acked, err)
			}
		}
		// The hook saw every entry once, in seq order per recipient.
		hooked := hook.entries()
		seen := map[codec.UserID]codec.Seq{}
		for _, e := range hooked {
			if e.Delivery.Seq != seen[e.To]+1 {
				t.Fatalf("hook order: user %d got seq %d after %d", e.To, e.Delivery.Seq, seen[e.To])
			}
			seen[e.To] = e.Delivery.Seq
		}
		if len(hooked) != 2*senders*perSender {
			t.Fatalf("hook saw %d entries", len(hooked))
		}
		// A retried clientmsgid stores nothing and returns the original time.
		from := mustUser(t, s, "retry")
		first, err := s.Send(ctx, service.SendRequest{From: from, To: []codec.UserID{to}, ToUser: to, Body: "once", ClientMsgID: "s:k", UnixMilli: 1000})
		if err != nil || first.Duplicate {
			t.Fatal(first, err)
		}
		again, err := s.Send(ctx, service.SendRequest{From: from, To: []codec.UserID{to}, ToUser: to, Body: "once", ClientMsgID: "s:k", UnixMilli: 5000})
		if err != nil || !again.Duplicate || again.UnixMilli != 1000 {
			t.Fatalf("retry = %+v, %v", again, err)
		}
		if last, _, _ := s.InboxState(ctx, to); last != senders*perSender+1 {
			t.Fatalf("retry stored twice: last %d", last)
		}
		// A retry queued beside new sends (likely one group commit, so one
		// dedup chunk mixing old and new keys): only the new ones store.
		var mixed sync.WaitGroup
		res := make([]service.SendResult, 4)
		sendErrs := make([]error, 4)
		for i, cmid := range []string{"s:k", "s:n1", "s:n2", "s:n3"} {
			mixed.Add(1)
			s.SendAsync(ctx, service.SendRequest{From: from, To: []codec.UserID{to}, ToUser: to, Body: "mixed", ClientMsgID: cmid, UnixMilli: 7000},
				func(r service.SendResult, err error) { res[i], sendErrs[i] = r, err; mixed.Done() })
		}
		mixed.Wait()
		for i, r := range res {
			if sendErrs[i] != nil || r.Duplicate != (i == 0) || (i == 0 && r.UnixMilli != 1000) {
				t.Fatalf("mixed send %d = %+v, %v", i, r, sendErrs[i])
			}
		}
		if last, _, _ := s.InboxState(ctx, to); last != senders*perSender+4 {
			t.Fatalf("mixed batch: last %d, want %d", last, senders*perSender+4)
		}
	})
}

// A group message is stored once, in the group's log, at the group's next
// gseq; the commit hook gets one entry per recipient and one for the
// sender; a member's position starts where it joined and acknowledgements
// move it.
func TestGroupLog(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		a, b, c := mustUser(t, s, "a"), mustUser(t, s, "b"), mustUser(t, s, "c")
		hook := recordHook(s)
		g, err := s.CreateGroup(ctx, a, "g", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		if start, err := s.JoinGroup(ctx, g, b, 0, 0); err != nil || start != 0 {
			t.Fatalf("join b: start %d, %v", start, err)
		}
		// Concurrent senders: gseqs 1..n without gaps or repeats.
		const n = 60
		var wg sync.WaitGroup
		gseqs := make([]codec.Seq, n)
		for i := 0; i < n; i++ {
			wg.Add(1)
			from, to := a, b
			if i%2 == 1 {
				from, to = b, a
			}
			s.SendAsync(ctx, service.SendRequest{From: from, FromName: "x", To: []codec.UserID{to}, Group: g, Body: fmt.Sprint(i),
				ClientMsgID: fmt.Sprintf("s:%d", i), UnixMilli: 1000},
				func(r service.SendResult, err error) {
					if err != nil || r.Duplicate {
						t.Errorf("send %d: %+v %v", i, r, err)
					}
					gseqs[i] = r.GSeq
					wg.Done()
				})
		}
		wg.Wait()
		slices.Sort(gseqs)
		for i, q := range gseqs {
			if q != codec.Seq(i+1) {
				t.Fatalf("gseqs %v, want 1..%d", gseqs, n)
			}
		}
		again, err := s.Send(ctx, service.SendRequest{From: a, To: []codec.UserID{b}, Group: g, Body: "0", ClientMsgID: "s:0", UnixMilli: 5000})
		if err != nil || !again.Duplicate || again.GSeq != 0 || again.UnixMilli != 1000 {
			t.Fatalf("retry = %+v, %v", again, err)
		}
		log, err := s.GroupLog(ctx, g, 0, 1000)
		if err != nil || len(log) != n {
			t.Fatalf("log: %d rows, %v", len(log), err)
		}
		for i, d := range log {
			if d.GSeq != codec.Seq(i+1) || d.Seq != 0 || d.MsgID != codec.MsgGroupChat || d.GroupID != g || (d.ID != a && d.ID != b) {
				t.Fatalf("log row %d = %+v", i, d)
			}
		}
		if rest, err := s.GroupLog(ctx, g, n-2, 10); err != nil || len(rest) != 2 || rest[0].GSeq != n-1 {
			t.Fatalf("log after %d: %+v %v", n-2, rest, err)
		}
		for _, uid := range []codec.UserID{a, b} {
			if in, err := s.Inbox(ctx, uid, 0, 10); err != nil || len(in) != 0 {
				t.Fatalf("inbox of %d holds group messages: %+v %v", uid, in, err)
			}
		}
		// The hook: each message once to its recipient and once to its sender.
		per := map[codec.UserID]int{}
		for _, e := range hook.entries() {
			if e.Delivery.GSeq == 0 || e.Delivery.GroupID != g {
				t.Fatalf("hook entry %+v", e)
			}
			per[e.To]++
		}
		if per[a] != n || per[b] != n {
			t.Fatalf("hook entries per user %v, want %d each", per, n)
		}
		// Positions: c joins at the log's end; acknowledgements never lower.
		if sizes, err := s.GroupSizes(ctx, []codec.GroupID{g}); err != nil || !maps.Equal(sizes, map[codec.GroupID]int{g: 2}) {
			t.Fatalf("group sizes %v, %v; want %d: 2", sizes, err, g)
		}
		if start, err := s.JoinGroup(ctx, g, c, 0, 0); err != nil || start != n {
			t.Fatalf("join c: start %d, %v", start, err)
		}
		pos := func(uid codec.UserID) (codec.Seq, codec.Seq) {
			t.Helper()
			gs, err := s.UserGroups(ctx, uid)
			if err != nil || len(gs) != 1 || gs[0].ID != g {
				t.Fatalf("groups of %d: %+v %v", uid, gs, err)
			}
			return gs[0].Last, gs[0].Acked
		}
		if sizes, err := s.GroupSizes(ctx, []codec.GroupID{g, 999}); err != nil || !maps.Equal(sizes, map[codec.GroupID]int{g: 3}) {
			t.Fatalf("group sizes %v, %v; want %d: 3 and no entry for a missing group", sizes, err, g)
		}
		if last, acked := pos(c); last != n || acked != n {
			t.Fatalf("c: last %d acked %d, want %d %d", last, acked, n, n)
		}
		if last, acked := pos(b); last != n || acked != 0 {
			t.Fatalf("b: last %d acked %d, want %d 0", last, acked, n)
		}
		kb := service.AckKey{User: b, Group: g}
		if err := s.Ack(ctx, map[service.AckKey]codec.Seq{kb: 7, {User: a}: 0}); err != nil {
			t.Fatal(err)
		}
		s.Ack(ctx, map[service.AckKey]codec.Seq{kb: 3}) // never lowers
		if _, acked := pos(b); acked != 7 {
			t.Fatalf("b acked %d, want 7", acked)
		}
	})
}

func TestAck(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		a, b := mustUser(t, s, "a"), mustUser(t, s, "b")
		for i := 0; i < 5; i++ {
			if _, err := s.Send(ctx, service.SendRequest{From: a, To: []codec.UserID{b}, ToUser: b, Body: "x", UnixMilli: 1}); err != nil {
				t.Fatal(err)
			}
		}
		check := func(want codec.Seq) {
			t.Helper()
			if _, acked, err := s.InboxState(ctx, b); err != nil || acked != want {
				t.Fatalf("acked = %d (%v), want %d", acked, err, want)
			}
		}
		k := service.AckKey{User: b}
		if err := s.Ack(ctx, map[service.AckKey]codec.Seq{k: 3}); err != nil {
			t.Fatal(err)
		}
		check(3)
		s.Ack(ctx, map[service.AckKey]codec.Seq{k: 2}) // never lowers
		check(3)
		s.Ack(ctx, map[service.AckKey]codec.Seq{k: 9}) // beyond the last seq: ignored
		check(3)
		s.Ack(ctx, map[service.AckKey]codec.Seq{k: 5})
		check(5)
		rest, err := s.Inbox(ctx, b, 3, 10)
		if err != nil || len(rest) != 2 || rest[0].Seq != 4 {
			t.Fatalf("inbox after 3: %+v %v", rest, err)
		}
	})
}

func TestMigrationsIdempotent(t *testing.T) {
	for name, dsn := range backends(t) {
		t.Run(name, func(t *testing.T) {
			for i := 0; i < 2; i++ {
				s, err := Open(context.Background(), Config{DSN: dsn})
				if err != nil {
					t.Fatalf("open %d: %v", i, err)
				}
				var v int
				want := map[string]int{"sqlite": 6, "mysql": 4}[s.Driver()]
				if err := s.DB().Get(&v, "SELECT MAX(version) FROM schema_migrations"); err != nil || v != want {
					t.Fatalf("version %d, want %d (%v)", v, want, err)
				}
				s.Close()
			}
		})
	}
}

// TestMySQLMigrationRedoneAfterDDL: MySQL commits an ALTER TABLE on its
// own, so a start stopped after migration 4's ALTER (killed, or its
// UPDATE failing) left the column without the version record, and every
// later start failed on "Duplicate column name". It now runs the
// migration again and finds the ALTER done.
func TestMySQLMigrationRedoneAfterDDL(t *testing.T) {
	dsn := MySQLTestDSN(t)
	if dsn == "" {
		t.Skip("no MySQL (CHAT_TEST_MYSQL_DSN)")
	}
	s := openStore(t, Config{DSN: dsn})
	if _, err := s.DB().Exec("DELETE FROM schema_migrations WHERE version = 4"); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(t.Context(), Config{DSN: dsn})
	if err != nil {
		t.Fatalf("start after an interrupted migration 4: %v", err)
	}
	defer s2.Close()
	var v int
	if err := s2.DB().Get(&v, "SELECT MAX(version) FROM schema_migrations"); err != nil || v != 4 {
		t.Fatalf("version %d, want 4 (%v)", v, err)
	}
}

// TestMigrationsConcurrentSQLite: processes starting together on a new
// SQLite file (a server and chatbench -bulk-db) each open it; every one
// must start, with each migration applied once.
func TestMigrationsConcurrentSQLite(t *testing.T) {
	dsn := "sqlite:" + filepath.Join(t.TempDir(), "new.db")
	const n = 4
	stores := make([]*Store, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stores[i], errs[i] = Open(context.Background(), Config{DSN: dsn})
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("open %d: %v", i, errs[i])
		}
		defer stores[i].Close()
	}
	var versions []int
	if err := stores[0].DB().Select(&versions, "SELECT version FROM schema_migrations ORDER BY version"); err != nil ||
		!slices.Equal(versions, []int{1, 2, 3, 4, 5, 6}) {
		t.Fatalf("recorded migrations %v (%v), want 1 to 6 once each", versions, err)
	}
}

// TestMigrationCountsMembers: a database from before the member counts
// (chat_groups.members) gets each group's count when it is opened.
func TestMigrationCountsMembers(t *testing.T) {
	for name, dsn := range backends(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			s := openStore(t, Config{DSN: dsn})
			a, b := mustUser(t, s, "a"), mustUser(t, s, "b")
			g1, err := s.CreateGroup(ctx, a, "g1", "", 0)
			if err != nil {
				t.Fatal(err)
			}
			g2, err := s.CreateGroup(ctx, b, "g2", "", 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.JoinGroup(ctx, g1, b, 0, 0); err != nil {
				t.Fatal(err)
			}
			// Back to the schema before: no column, no record of it.
			last := map[string]int{"sqlite": 6, "mysql": 4}[s.Driver()]
			for _, q := range []string{"ALTER TABLE chat_groups DROP COLUMN members", "DELETE FROM schema_migrations WHERE version = ?"} {
				if _, err := s.DB().Exec(q, []any{last}[:strings.Count(q, "?")]...); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			s.Close()
			s = openStore(t, Config{DSN: dsn})
			sizes, err := s.GroupSizes(ctx, []codec.GroupID{g1, g2})
			if err != nil || !maps.Equal(sizes, map[codec.GroupID]int{g1: 2, g2: 1}) {
				t.Fatalf("sizes after the migration %v (%v), want %d: 2, %d: 1", sizes, err, g1, g2)
			}
		})
	}
}

func TestParseDSN(t *testing.T) {
	for _, bad := range []string{"", "chat.db", "postgres:x", "sqlite:", "mysql:%%%"} {
		if _, _, _, err := parseDSN(bad); !errors.Is(err, ErrBadDSN) {
			t.Errorf("%q: %v", bad, err)
		}
	}
	if d, c, _, err := parseDSN("mysql:u:p@tcp(127.0.0.1:3306)/chat"); err != nil || d != "mysql" || c == "" {
		t.Errorf("mysql dsn: %s %s %v", d, c, err)
	}
}

// TestSQLitePragmas checks, for whichever SQLite library the build uses
// (SQLiteImplementation), that every pooled connection gets the default
// pragmas and the DSN's own, and that a malformed one is refused.
func TestSQLitePragmas(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.db")
	s := openStore(t, Config{DSN: "sqlite:" + path + "?_pragma=wal_autocheckpoint(256)"})
	t.Log(SQLiteImplementation)
	ctx := context.Background()
	// Three connections held at once: three different ones of the pool.
	var conns []*sql.Conn
	for range 3 {
		c, err := s.DB().Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	want := map[string]string{
		"journal_mode": "wal", "synchronous": "2", "busy_timeout": "10000",
		"temp_store": "2", "cache_size": "-65536", "wal_autocheckpoint": "256",
	}
	for i, c := range conns {
		for name, v := range want {
			var got string
			if err := c.QueryRowContext(ctx, "PRAGMA "+name).Scan(&got); err != nil || got != v {
				t.Errorf("connection %d: PRAGMA %s = %q (%v), want %q", i, name, got, err, v)
			}
		}
	}
	if bad, err := Open(ctx, Config{DSN: "sqlite:" + path + "?_pragma=cache_size"}); !errors.Is(err, ErrBadDSN) {
		if err == nil {
			bad.Close()
		}
		t.Errorf("a _pragma without (VALUE): %v, want ErrBadDSN", err)
	}
}

// BenchmarkSendBatch measures the group-commit send path on SQLite: many
// sends in flight (as the server's pipelined connections produce), each with
// a clientmsgid and a 100-byte body, between 1,000 users. b.N is the number
// of messages; use -benchtime=200000x or more for a realistically large
// inbox. "background" is the default (checkpointer goroutine, batches of
// up to 16,384 rows); "auto" keeps SQLite's in-commit WAL checkpoint;
// "batch2k" and "batch8k" bound the batches lower; "mysql" runs on the
// MariaDB named by CHAT_TEST_MYSQL_DSN.
func BenchmarkSendBatch(b *testing.B) {
	for _, v := range []struct {
		name, query string
		batch       int
	}{
		{"background", "", 0},
		{"auto", "?_pragma=wal_autocheckpoint(1000)", 0},
		{"batch16", "", 16},
		{"batch64", "", 64},
		{"batch2k", "", 2048},
		{"batch8k", "", 8192},
		{"mysql", "", 0},
	} {
		b.Run(v.name, func(b *testing.B) {
			dsn := "sqlite:" + filepath.Join(b.TempDir(), "bench.db") + v.query
			if v.name == "mysql" {
				if dsn = MySQLTestDSN(b); dsn == "" {
					b.Skip("CHAT_TEST_MYSQL_DSN is not set")
				}
			}
			s, err := Open(context.Background(), Config{DSN: dsn, MaxBatch: v.batch})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			benchSend(b, s, 1000)
		})
	}
}

func benchSend(b *testing.B, s *Store, nusers int) {
	ctx := context.Background()
	users := make([]codec.UserID, nusers)
	for i := range users {
		users[i], _ = s.CreateUser(ctx, fmt.Sprintf("u%d", i), []byte("h"))
	}
	body := strings.Repeat("x", 100)
	runSends(b, s, func(i int) service.SendRequest {
		from, to := users[i%len(users)], users[(i*7+1)%len(users)]
		return service.SendRequest{From: from, FromName: "u", To: []codec.UserID{to}, ToUser: to, Body: body}
	})
}

// runSends times b.N sends, req(i) each (with a unique clientmsgid), all
// queued at once, and reports msgs/s.
func runSends(b *testing.B, s *Store, req func(i int) service.SendRequest) {
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	wg.Add(b.N)
	for i := 0; i < b.N; i++ {
		r := req(i)
		r.ClientMsgID, r.UnixMilli = fmt.Sprintf("s:%d", i), time.Now().UnixMilli()
		s.SendAsync(ctx, r, func(_ service.SendResult, err error) {
			if err != nil {
				b.Error(err)
			}
			wg.Done()
		})
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkSendGroup: sends to 100-member groups (10 groups of the 1,000
// users) on SQLite; a send is one group log row, and deliveries/s counts one
// per recipient (the entries handed to the commit hook).
// BenchmarkLoginReads: the four reads a login makes (user, friends,
// groups, inbox state), from 256 concurrent logins, as in a login storm;
// the readBatcher batches them. Reports logins/s.
func BenchmarkLoginReads(b *testing.B) {
	for _, name := range []string{"sqlite", "mysql"} {
		b.Run(name, func(b *testing.B) {
			dsn := "sqlite:" + filepath.Join(b.TempDir(), "bench.db")
			if name == "mysql" {
				if dsn = MySQLTestDSN(b); dsn == "" {
					b.Skip("CHAT_TEST_MYSQL_DSN is not set")
				}
			}
			s, err := Open(context.Background(), Config{DSN: dsn})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			ctx := context.Background()
			ids := make([]codec.UserID, 1000)
			prefix := fmt.Sprintf("lr%d-", time.Now().UnixNano())
			for i := range ids {
				ids[i] = mustUser(b, s, fmt.Sprintf("%s%d", prefix, i))
			}
			var next atomic.Int64
			b.SetParallelism(128) // 256 logins in flight on 2 CPUs
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					id := ids[next.Add(1)%int64(len(ids))]
					if _, err := s.User(ctx, id); err != nil {
						b.Error(err)
						return
					}
					if _, err := s.Friends(ctx, id); err != nil {
						b.Error(err)
						return
					}
					if _, err := s.UserGroups(ctx, id); err != nil {
						b.Error(err)
						return
					}
					if _, _, err := s.InboxState(ctx, id); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "logins/s")
		})
	}
}

func BenchmarkSendGroup(b *testing.B) {
	ctx := context.Background()
	s, err := Open(ctx, Config{DSN: "sqlite:" + filepath.Join(b.TempDir(), "bench.db")})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const groups, size = 10, 100
	members := make([][]codec.UserID, groups)
	gids := make([]codec.GroupID, groups)
	for g := range groups {
		for i := range size {
			uid, err := s.CreateUser(ctx, fmt.Sprintf("u%d-%d", g, i), []byte("h"))
			if err != nil {
				b.Fatal(err)
			}
			members[g] = append(members[g], uid)
		}
		if gids[g], err = s.CreateGroup(ctx, members[g][0], fmt.Sprintf("g%d", g), "", 0); err != nil {
			b.Fatal(err)
		}
		for _, uid := range members[g][1:] {
			if _, err := s.JoinGroup(ctx, gids[g], uid, 0, 0); err != nil {
				b.Fatal(err)
			}
		}
	}
	body := strings.Repeat("x", 100)
	runSends(b, s, func(i int) service.SendRequest {
		g := i % groups
		from := members[g][(i/groups)%size]
		to := make([]codec.UserID, 0, size-1)
		for _, uid := range members[g] {
			if uid != from {
				to = append(to, uid)
			}
		}
		return service.SendRequest{From: from, FromName: "u", To: to, Group: gids[g], Body: body}
	})
	b.ReportMetric(float64(b.N*(size-1))/b.Elapsed().Seconds(), "deliveries/s")
}

// TestCheckpointer: the background checkpointer copies committed pages into
// the database file long before SQLite's own (in-commit) checkpoint would;
// Close leaves an empty write-ahead log.
func TestCheckpointer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ckpt.db")
	s, err := Open(context.Background(), Config{DSN: "sqlite:" + path, CheckpointInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var auto int
	if err := s.DB().Get(&auto, "PRAGMA wal_autocheckpoint"); err != nil || auto != 8192 {
		t.Fatalf("wal_autocheckpoint = %d, %v; want 8192", auto, err)
	}
	ctx := context.Background()
	b := sendUntilCheckpointed(t, s, path)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if n := fileSize(path + "-wal"); n != 0 {
		t.Fatalf("write-ahead log is %d bytes after Close", n)
	}
	s2, err := Open(ctx, Config{DSN: "sqlite:" + path})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if last, _, err := s2.InboxState(ctx, b); err != nil || last != 300 {
		t.Fatalf("after reopen: last %d, %v", last, err)
	}
}

// TestCheckpointerRows: once the writer has committed CheckpointRows rows
// since the last copy, the checkpointer copies the log without waiting for
// its interval (here an hour).
func TestCheckpointerRows(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rows.db")
	s, err := Open(context.Background(), Config{DSN: "sqlite:" + path, CheckpointInterval: time.Hour, CheckpointRows: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sendUntilCheckpointed(t, s, path)
	if got := s.ckpt.committed.Load(); got < 300 {
		t.Fatalf("committed rows %d after 300 sends", got)
	}
}

// sendUntilCheckpointed sends 300 messages of 1,000 bytes from a new user
// to another, and waits (5 s at most) until the database file at path has
// grown by 250,000 bytes, i.e. a checkpoint copied them. It returns the
// recipient.
func sendUntilCheckpointed(t *testing.T, s *Store, path string) codec.UserID {
	t.Helper()
	before := fileSize(path)
	ctx := context.Background()
	a, b := mustUser(t, s, "a"), mustUser(t, s, "b")
	body := strings.Repeat("y", 1000)
	for i := 0; i < 300; i++ {
		if _, err := s.Send(ctx, service.SendRequest{From: a, To: []codec.UserID{b}, ToUser: b, Body: body, UnixMilli: 1}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, fmt.Sprintf("a checkpoint: the database file to grow by 250,000 bytes from %d", before), func() bool {
		return fileSize(path) >= before+250_000
	})
	return b
}

// waitFor polls ok until it holds, and fails t if it does not within
// timeout; what names what it waits for.
func waitFor(t *testing.T, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !ok(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
	}
}

// Under steady writes the log stays bounded: the background checkpoint alone
// never completes while the writer appends, so the writer's own checkpoint
// must finish the copy once the log reaches wal_autocheckpoint pages. Here
// the limits are small (256 pages, 1 MiB kept) to see it quickly.
func TestWALBoundedUnderLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "wal.db")
	s, err := Open(context.Background(), Config{
		DSN:                "sqlite:" + path + "?_pragma=wal_autocheckpoint(256)&_pragma=journal_size_limit(1048576)",
		CheckpointInterval: 5 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	users := make([]codec.UserID, 50)
	for i := range users {
		users[i] = mustUser(t, s, fmt.Sprintf("w%d", i))
	}
	body := strings.Repeat("w", 900)
	var maxWAL int64
	for round := 0; round < 40; round++ {
		var wg sync.WaitGroup
		for i := 0; i < 200; i++ {
			wg.Add(1)
			to := users[(round+i)%len(users)]
			s.SendAsync(ctx, service.SendRequest{From: users[i%len(users)], To: []codec.UserID{to}, ToUser: to, Body: body, UnixMilli: 1},
				func(_ service.SendResult, err error) {
					if err != nil {
						t.Error(err)
					}
					wg.Done()
				})
		}
		wg.Wait()
		maxWAL = max(maxWAL, fileSize(path+"-wal"))
	}
	// 8,000 messages of ~1 KB: about 8 MB of rows, several times that in
	// WAL frames; the log must have been rewound and cut back on the way.
	if maxWAL > 6<<20 {
		t.Fatalf("write-ahead log grew to %d bytes under load", maxWAL)
	}
}

func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// Many retried and new clientmsgids in flight at once (so batches take the
// multi-row dedup path): each retry stores nothing and returns the original
// time, each new one is stored once.
func TestDedupManyInFlight(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		from, to := mustUser(t, s, "bulkfrom"), mustUser(t, s, "bulkto")
		sendAll := func(cmids []string, ms int64) ([]service.SendResult, []error) {
			var wg sync.WaitGroup
			res, errs := make([]service.SendResult, len(cmids)), make([]error, len(cmids))
			for i, c := range cmids {
				wg.Add(1)
				s.SendAsync(ctx, service.SendRequest{From: from, To: []codec.UserID{to}, ToUser: to, Body: "b", ClientMsgID: c, UnixMilli: ms},
					func(r service.SendResult, err error) { res[i], errs[i] = r, err; wg.Done() })
			}
			wg.Wait()
			return res, errs
		}
		var first, second []string
		for i := 0; i < 200; i++ {
			first = append(first, fmt.Sprintf("k%d", i))
		}
		for i := 0; i < 300; i++ {
			second = append(second, fmt.Sprintf("k%d", i)) // 200 retries, 100 new
		}
		if _, errs := sendAll(first, 1000); errors.Join(errs...) != nil {
			t.Fatal(errors.Join(errs...))
		}
		res, errs := sendAll(second, 2000)
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		for i, r := range res {
			retry := i < 200
			if r.Duplicate != retry || (retry && r.UnixMilli != 1000) || (!retry && r.UnixMilli != 2000) {
				t.Fatalf("send %d: %+v", i, r)
			}
		}
		if last, _, _ := s.InboxState(ctx, to); last != 300 {
			t.Fatalf("stored %d messages, want 300", last)
		}
	})
}

// Acknowledgements for more users than one statement takes (MySQL writes
// them in chunks, starting at a random one) all land.
func TestAckManyUsers(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		from := mustUser(t, s, "acksender")
		const n = 3*ackChunk + 7
		users := make([]codec.UserID, n)
		var wg sync.WaitGroup
		for i := range users {
			users[i] = mustUser(t, s, fmt.Sprintf("acker%d", i))
			for j := 0; j < 2; j++ {
				wg.Add(1)
				s.SendAsync(ctx, service.SendRequest{From: from, To: []codec.UserID{users[i]}, ToUser: users[i], Body: "b", UnixMilli: 1},
					func(_ service.SendResult, err error) {
						if err != nil {
							t.Error(err)
						}
						wg.Done()
					})
			}
		}
		wg.Wait()
		acks := map[service.AckKey]codec.Seq{}
		for i, u := range users {
			acks[service.AckKey{User: u}] = codec.Seq(1 + i%2)
		}
		if err := s.Ack(ctx, acks); err != nil {
			t.Fatal(err)
		}
		for k, want := range acks {
			if _, acked, err := s.InboxState(ctx, k.User); err != nil || acked != want {
				t.Fatalf("user %d: acked %d (%v), want %d", k.User, acked, err, want)
			}
		}
	})
}

// TestWritersInParallel (MySQL): while one lane's commit waits for a row
// lock, a sender on the other lane still gets its sends committed; and
// each sender's messages to one recipient take seqs in the order sent,
// whichever lanes the senders are on.
func TestWritersInParallel(t *testing.T) {
	dsn := MySQLTestDSN(t)
	if dsn == "" {
		t.Skip("CHAT_TEST_MYSQL_DSN is not set (./build.sh test sets it)")
	}
	ctx := context.Background()
	s := openStore(t, Config{DSN: dsn, Writers: 2})
	// Two senders on different lanes (lanes go by user id), two recipients.
	a := mustUser(t, s, "a")
	b := mustUser(t, s, "b")
	for i := 0; uint64(a)%2 == uint64(b)%2; i++ {
		if i == 8 {
			t.Fatalf("user ids %d and %d...: all of one parity (auto_increment_increment?)", a, b)
		}
		b = mustUser(t, s, fmt.Sprintf("b%d", i))
	}
	x, y := mustUser(t, s, "x"), mustUser(t, s, "y")
	send := func(from, to codec.UserID, body string, done func(service.SendResult, error)) {
		s.SendAsync(ctx, service.SendRequest{From: from, FromName: "u", To: []codec.UserID{to}, ToUser: to,
			Body: body, ClientMsgID: body, UnixMilli: 1}, done)
	}
	// What another node's commit allocating x's next seq holds.
	tx, err := s.DB().BeginTxx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback() // on a failure, before Close waits for the lanes
	if _, err := tx.Exec("UPDATE inbox_state SET last_seq = last_seq WHERE userid = ?", x); err != nil {
		t.Fatal(err)
	}
	blocked := make(chan error, 1)
	send(a, x, "a-blocked", func(_ service.SendResult, err error) { blocked <- err })
	free := make(chan error, 1)
	send(b, y, "b-free", func(_ service.SendResult, err error) { free <- err })
	select {
	case err := <-free:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("a send on the other lane waited for the locked lane's commit")
	}
	select {
	case err := <-blocked:
		t.Fatalf("the send to the locked recipient finished while the lock was held: %v", err)
	default:
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := <-blocked; err != nil {
		t.Fatal(err)
	}
	// Both senders, both lanes, one recipient: each sender's order holds.
	var wg sync.WaitGroup
	for i := range 200 {
		for _, from := range []codec.UserID{a, b} {
			wg.Add(1)
			send(from, y, fmt.Sprintf("%d-%03d", from, i), func(_ service.SendResult, err error) {
				if err != nil {
					t.Error(err)
				}
				wg.Done()
			})
		}
	}
	wg.Wait()
	got, err := s.Inbox(ctx, y, 1, 1000) // after b-free
	if err != nil || len(got) != 400 {
		t.Fatalf("inbox of y: %d entries (%v), want 400", len(got), err)
	}
	last := map[codec.UserID]string{}
	for _, d := range got {
		if d.Msg <= last[d.ID] {
			t.Fatalf("from %d: %q after %q", d.ID, d.Msg, last[d.ID])
		}
		last[d.ID] = d.Msg
	}
}

// TestAckBesideCommitLocks (MySQL): a group commit holds its recipients'
// inbox_state row locks until it commits; recording acknowledgements of
// the same users must not wait for them (they once did, and every ack
// flush held up the commits behind it).
func TestAckBesideCommitLocks(t *testing.T) {
	dsn := MySQLTestDSN(t)
	if dsn == "" {
		t.Skip("CHAT_TEST_MYSQL_DSN is not set (./build.sh test sets it)")
	}
	ctx := context.Background()
	s, err := Open(ctx, Config{DSN: dsn})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, b := mustUser(t, s, "a"), mustUser(t, s, "b")
	for range 3 {
		if _, err := s.Send(ctx, service.SendRequest{From: a, To: []codec.UserID{b}, ToUser: b, Body: "x", UnixMilli: 1}); err != nil {
			t.Fatal(err)
		}
	}
	// What a group commit allocating b's next seq holds.
	tx, err := s.DB().BeginTxx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.Exec("UPDATE inbox_state SET last_seq = last_seq + 1 WHERE userid = ?", b); err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := s.Ack(actx, map[service.AckKey]codec.Seq{{User: b}: 2}); err != nil {
		t.Fatalf("ack while b's inbox_state row is locked: %v", err)
	}
	if _, acked, err := s.InboxState(ctx, b); err != nil || acked != 2 {
		t.Fatalf("acked = %d (%v), want 2", acked, err)
	}
}
