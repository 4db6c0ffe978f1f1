package server_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chatcluster/chatcluster/client"
	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/conf"
)

// insertUsers inserts n users straight into the server's SQLite file, in
// one transaction (the rows SIGNUP writes; they cannot log in), named
// name(i). Each becomes a member of group gid unless it is 0 (counted in
// chat_groups.members, as ADD_GROUP counts it), and a friend of friendOf
// unless it is 0 (both rows, as ADD_FRIEND writes them). It returns their
// ids, in insertion (and id) order.
func insertUsers(t *testing.T, ts *testServer, n int, name func(i int) string, gid codec.GroupID, friendOf codec.UserID) []codec.UserID {
	t.Helper()
	now := time.Now().UnixMilli()
	ids := make([]codec.UserID, n)
	dbTx(t, ts, func(exec func(string, ...any) int64) {
		for i := range n {
			id := exec("INSERT INTO users (name, password, created_ms) VALUES (?, x'00', ?)", name(i), now)
			ids[i] = codec.UserID(id)
			exec("INSERT INTO inbox_state (userid, last_seq, acked_seq) VALUES (?, 0, 0)", id)
			if gid != 0 {
				exec("INSERT INTO group_members (groupid, userid, role, joined_ms) VALUES (?, ?, ?, ?)", gid, id, codec.RoleNormal, now+int64(i))
			}
			if friendOf != 0 {
				exec("INSERT INTO friends (userid, friendid, created_ms) VALUES (?, ?, ?), (?, ?, ?)", friendOf, id, now, id, friendOf, now)
			}
		}
		if gid != 0 {
			exec("UPDATE chat_groups SET members = members + ? WHERE id = ?", n, gid)
		}
	})
	return ids
}

// longName is the i-th of 50-character ASCII names starting with prefix.
func longName(prefix string) func(int) string {
	return func(i int) string {
		n := fmt.Sprintf("%s%08d", prefix, i)
		return n + strings.Repeat("x", 50-len(n))
	}
}

// escapedName is the i-th of 50-character names that are ~300 bytes of
// JSON each (U+2028 is written as \u2028).
func escapedName(i int) string {
	n := fmt.Sprint(i)
	return n + strings.Repeat("\u2028", 50-2*len(n)) + n
}

// groupOf returns the group gid of a LOGIN_ACK.
func groupOf(t *testing.T, ack *codec.LoginAck, gid codec.GroupID) codec.Group {
	t.Helper()
	i := slices.IndexFunc(ack.Groups, func(g codec.Group) bool { return g.ID == gid })
	if i < 0 {
		t.Fatalf("group %d not in LOGIN_ACK: %+v", gid, ack.Groups)
	}
	return ack.Groups[i]
}

// A member of a group too big to list logs in and gets the group's size
// without its members (20,000 of them: 2 MB used to be read and sent at
// every login, and 200,000, 21 MB above max-outbound, closed the
// connection as a slow consumer at every login), and a small group with
// all of its members.
func TestLoginAckBigGroupSizeOnly(t *testing.T) {
	ts := startServer(t, func(c *conf.Config) { c.MaxOutbound = 1 << 20 })
	ctx := ctxT(t)
	alice := ts.newUser("alice", client.Options{})
	bob := ts.newUser("bob", client.Options{})
	big, err := alice.c.CreateGroup(ctx, "big", "many")
	if err != nil {
		t.Fatal(err)
	}
	small, err := alice.c.CreateGroup(ctx, "small", "few")
	if err != nil {
		t.Fatal(err)
	}
	if err := bob.c.AddGroup(ctx, small); err != nil {
		t.Fatal(err)
	}
	const n = 20000
	insertUsers(t, ts, n, longName("m"), big, 0)
	alice.c.Close()
	ts.relogin(alice, client.Options{})
	if g := groupOf(t, alice.ack, big); g.Size != n+1 || len(g.Users) != 0 || g.Name != "big" || g.Desc != "many" {
		t.Fatalf("big group: %d users, size %d (%s, %s); want size %d and no users", len(g.Users), g.Size, g.Name, g.Desc, n+1)
	}
	g := groupOf(t, alice.ack, small)
	want := []codec.GroupUser{
		{ID: alice.id, Name: "alice", State: codec.StateOnline, Role: codec.RoleCreator},
		{ID: bob.id, Name: "bob", State: codec.StateOnline, Role: codec.RoleNormal},
	}
	if g.Size != 2 || !slices.Equal(g.Users, want) {
		t.Fatalf("small group: size %d, users %+v; want 2, %+v", g.Size, g.Users, want)
	}
}

// LOGIN_ACK lists groups of at most login-group-users members, in group
// id order, while the members listed stay within login-users in all.
func TestLoginAckMemberBudget(t *testing.T) {
	ts := startServer(t, func(c *conf.Config) { c.LoginGroupUsers, c.LoginUsers = 10, 25 })
	ctx := ctxT(t)
	alice := ts.newUser("alice", client.Options{})
	sizes := []int{5, 11, 10, 10, 5}
	listed := []bool{true, false, true, true, false} // 11 is over 10; then 25 are listed
	var gids []codec.GroupID
	for i, size := range sizes {
		gid, err := alice.c.CreateGroup(ctx, fmt.Sprintf("g%d", i), "")
		if err != nil {
			t.Fatal(err)
		}
		insertUsers(t, ts, size-1, longName(fmt.Sprintf("g%d-", i)), gid, 0)
		gids = append(gids, gid)
	}
	alice.c.Close()
	ts.relogin(alice, client.Options{})
	for i, gid := range gids {
		g := groupOf(t, alice.ack, gid)
		if want := map[bool]int{true: sizes[i]}[listed[i]]; g.Size != sizes[i] || len(g.Users) != want {
			t.Errorf("group %d (%d members): size %d, %d users listed; want %d listed", i, sizes[i], g.Size, len(g.Users), want)
		}
	}
}

// A LOGIN_ACK whose member lists alone would pass the frame budget
// (max-outbound / 2) goes without them: the sizes stay.
func TestLoginAckDropsMemberListsToFit(t *testing.T) {
	ts := startServer(t, func(c *conf.Config) {
		c.MaxOutbound, c.LoginGroupUsers, c.LoginUsers = 1<<20, 100000, 100000
	})
	ctx := ctxT(t)
	alice := ts.newUser("alice", client.Options{})
	gid, err := alice.c.CreateGroup(ctx, "big", "")
	if err != nil {
		t.Fatal(err)
	}
	insertUsers(t, ts, 8000, longName("m"), gid, 0) // ~800 KB of members
	alice.c.Close()
	ts.relogin(alice, client.Options{})
	if g := groupOf(t, alice.ack, gid); g.Size != 8001 || len(g.Users) != 0 {
		t.Fatalf("group: size %d, %d users; want 8001 and none", g.Size, len(g.Users))
	}
	if !ts.Logged("LOGIN_ACK too large: sent without member lists") {
		t.Error("not logged")
	}
}

// A user whose friends are more than max-friends (made before the cap, or
// straight in the database: 4,000 friends with 300-byte names here, 1.3 MB;
// 60,000 of them, 20 MB, locked the user out) logs in and gets the first
// max-friends of them; and nobody can add one more.
func TestLoginAckFriendsBeyondCap(t *testing.T) {
	ts := startServer(t, func(c *conf.Config) { c.MaxOutbound, c.MaxFriends = 1<<20, 1000 })
	victim := ts.newUser("victim", client.Options{})
	ids := insertUsers(t, ts, 4000, escapedName, 0, victim.id)
	victim.c.Close()
	ts.relogin(victim, client.Options{})
	if got := len(victim.ack.Friends); got != 1000 || victim.ack.Friends[0].ID != ids[0] || victim.ack.Friends[999].ID != ids[999] {
		t.Fatalf("%d friends listed, want the first 1000", got)
	}
	other := ts.newUser("other", client.Options{})
	err := other.c.AddFriend(ctxT(t), victim.id)
	wantErrno(t, err, codec.ErrnoLimit)
	if want := fmt.Sprintf("user %d has 4000 friends, more than the 1000 allowed", victim.id); !strings.Contains(err.Error(), want) {
		t.Fatalf("error %v does not say %q", err, want)
	}
}

// A LOGIN_ACK too large even without member lists and offline messages
// is refused with errno 11 (the connection stays open, not logged in),
// not sent for the server to close the connection over.
func TestLoginAckTooLargeRefused(t *testing.T) {
	ts := startServer(t, func(c *conf.Config) { c.MaxOutbound = 64 << 10 })
	victim := ts.newUser("victim", client.Options{})
	insertUsers(t, ts, 200, escapedName, 0, victim.id) // ~60 KB of friends
	victim.c.Close()
	c := ts.dial(client.Options{})
	_, err := c.Login(ctxT(t), victim.id, victim.password)
	wantErrno(t, err, codec.ErrnoLimit)
	if !strings.Contains(err.Error(), "more than the 32768 allowed") {
		t.Fatalf("errmsg does not name the limit: %v", err)
	}
	if err := c.Ping(ctxT(t)); err != nil {
		t.Fatalf("connection closed after the refusal: %v", err)
	}
	_, err = c.Chat(ctxT(t), victim.id, "still here?")
	wantErrno(t, err, codec.ErrnoNotLoggedIn)
	if !ts.Logged("login refused: LOGIN_ACK too large") || ts.Logged(victim.password) {
		t.Error("refusal not logged, or logged with the password")
	}
}

// insertInbox puts n one-to-one messages of body from from in uid's inbox,
// none acknowledged, straight into the database.
func insertInbox(t *testing.T, ts *testServer, uid, from codec.UserID, n int, body string) {
	t.Helper()
	now := time.Now().UnixMilli()
	dbTx(t, ts, func(exec func(string, ...any) int64) {
		for seq := 1; seq <= n; seq++ {
			exec("INSERT INTO inbox (userid, seq, kind, fromid, fromname, toid, groupid, body, created_ms) VALUES (?, ?, 6, ?, 'other', ?, 0, ?, ?)",
				uid, seq, from, uid, body, now)
		}
		exec("UPDATE inbox_state SET last_seq = ? WHERE userid = ?", n, uid)
	})
}

// LOGIN_ACK's offline messages are bounded by their encoded size (1 MiB):
// 300 messages of 4096 control characters, 24 KB each once escaped, used
// to make a 6 MB LOGIN_ACK. The rest follow it, in order.
func TestOfflineBoundedByEncodedSize(t *testing.T) {
	ts := startServer(t, nil)
	alice := ts.newUser("alice", client.Options{})
	other := ts.newUser("other", client.Options{})
	alice.c.Close()
	const n = 300
	insertInbox(t, ts, alice.id, other.id, n, strings.Repeat("\x01", 4096))
	r := ts.raw()
	r.send(map[string]any{"msgid": codec.MsgLogin, "id": alice.id, "password": alice.password})
	body, err := r.readBody()
	if err != nil {
		t.Fatal(err)
	}
	var ack codec.LoginAck
	if err := json.Unmarshal(body, &ack); err != nil || ack.Errno != codec.OK {
		t.Fatalf("LOGIN_ACK: %v %+v", err, ack.ErrMsg)
	}
	if len(body) > 1<<20+4096 || len(ack.OfflineMsg) == 0 {
		t.Fatalf("LOGIN_ACK of %d bytes with %d offline messages; want at most 1 MiB of them", len(body), len(ack.OfflineMsg))
	}
	next := codec.Seq(1)
	for _, d := range ack.OfflineMsg {
		if d.Seq != next {
			t.Fatalf("offline message seq %d, want %d", d.Seq, next)
		}
		next++
	}
	for next <= n {
		m, err := r.read()
		if err != nil {
			t.Fatalf("after seq %d: %v", next-1, err)
		}
		if codec.Seq(num(m, "seq")) != next {
			t.Fatalf("delivery %v, want seq %d", m["seq"], next)
		}
		next++
	}
}

// GROUP_USERS pages through a group too big for LOGIN_ACK, completely and
// in id order, with names, roles and online states; only members may ask.
func TestGroupUsersPages(t *testing.T) {
	ts := startServer(t, nil)
	ctx := ctxT(t)
	alice := ts.newUser("alice", client.Options{})
	bob := ts.newUser("bob", client.Options{})
	carol := ts.newUser("carol", client.Options{})
	gid, err := alice.c.CreateGroup(ctx, "big", "")
	if err != nil {
		t.Fatal(err)
	}
	const n = 2500
	name := longName("m")
	ids := insertUsers(t, ts, n, name, gid, 0)
	if err := carol.c.AddGroup(ctx, gid); err != nil {
		t.Fatal(err)
	}
	want := map[codec.UserID]codec.GroupUser{
		alice.id: {ID: alice.id, Name: "alice", State: codec.StateOnline, Role: codec.RoleCreator},
		carol.id: {ID: carol.id, Name: "carol", State: codec.StateOnline, Role: codec.RoleNormal},
	}
	for i, id := range ids {
		want[id] = codec.GroupUser{ID: id, Name: name(i), State: codec.StateOffline, Role: codec.RoleNormal}
	}
	var got []codec.GroupUser
	var pages []int
	after := codec.UserID(0)
	for more := true; more; {
		var page []codec.GroupUser
		if page, more, err = alice.c.GroupUsers(ctx, gid, after, 0); err != nil {
			t.Fatal(err)
		}
		pages = append(pages, len(page))
		got = append(got, page...)
		if len(page) > 0 {
			after = page[len(page)-1].ID
		}
	}
	if !slices.Equal(pages, []int{1000, 1000, n + 2 - 2000}) {
		t.Fatalf("pages of %v members, want 1000, 1000, %d", pages, n+2-2000)
	}
	for i, u := range got {
		if i > 0 && u.ID <= got[i-1].ID {
			t.Fatalf("member %d (id %d) after id %d: not in id order", i, u.ID, got[i-1].ID)
		}
		if u != want[u.ID] {
			t.Fatalf("member %+v, want %+v", u, want[u.ID])
		}
	}
	if len(got) != len(want) {
		t.Fatalf("%d members listed, want %d", len(got), len(want))
	}
	// A limit: that many; above the page size: the page size.
	if page, more, err := alice.c.GroupUsers(ctx, gid, got[9].ID, 7); err != nil || !more || !slices.Equal(page, got[10:17]) {
		t.Fatalf("7 after the 10th: %v %v %v", page, more, err)
	}
	if page, _, err := alice.c.GroupUsers(ctx, gid, 0, 5000); err != nil || len(page) != codec.MaxGroupUsersPage {
		t.Fatalf("limit 5000: %d members, %v", len(page), err)
	}
	// Not a member: errno 6; no such group: errno 5.
	_, _, err = bob.c.GroupUsers(ctx, gid, 0, 0)
	wantErrno(t, err, codec.ErrnoForbidden)
	if !errors.Is(err, client.ErrForbidden) {
		t.Fatalf("%v is not ErrForbidden", err)
	}
	_, _, err = alice.c.GroupUsers(ctx, gid+100, 0, 0)
	wantErrno(t, err, codec.ErrnoNotFound)

	// On the wire: answered with msgid 17, errors too.
	r := ts.raw()
	r.send(map[string]any{"msgid": codec.MsgGroupUsers, "reqid": 1, "groupid": gid})
	if m := r.mustRead(); num(m, "msgid") != int(codec.MsgGroupUsersAck) || num(m, "errno") != int(codec.ErrnoNotLoggedIn) {
		t.Fatalf("before login: %v", m)
	}
	rawLogin(t, r, "dave")
	for _, req := range []map[string]any{
		{"msgid": codec.MsgGroupUsers, "reqid": 2},
		{"msgid": codec.MsgGroupUsers, "reqid": 3, "groupid": gid, "limit": 0},
		{"msgid": codec.MsgGroupUsers, "reqid": 4, "groupid": gid, "after": -1},
	} {
		r.send(req)
		if m := r.mustRead(); num(m, "msgid") != int(codec.MsgGroupUsersAck) || num(m, "errno") != int(codec.ErrnoBadRequest) {
			t.Fatalf("%v: %v", req, m)
		}
	}
}

// The caps: friends per user (either side of ADD_FRIEND), groups per user
// (CREATE_GROUP and ADD_GROUP), members per group; each is errno 11 with
// an errmsg naming it, and an existing friendship or membership is still
// errno 7.
func TestCaps(t *testing.T) {
	ts := startServer(t, func(c *conf.Config) { c.MaxFriends, c.MaxGroups, c.MaxGroupMembers = 2, 2, 3 })
	ctx := ctxT(t)
	u := map[string]*user{}
	for _, name := range []string{"alice", "bob", "carol", "dave", "erin"} {
		u[name] = ts.newUser(name, client.Options{})
	}
	alice, bob, carol, dave, erin := u["alice"], u["bob"], u["carol"], u["dave"], u["erin"]
	limit := func(err error, want string) {
		t.Helper()
		wantErrno(t, err, codec.ErrnoLimit)
		var se *client.ServerError
		if !errors.As(err, &se) || se.ErrMsg != want {
			t.Fatalf("errmsg of %v, want %q", err, want)
		}
	}
	for _, f := range []*user{bob, carol} {
		if err := alice.c.AddFriend(ctx, f.id); err != nil {
			t.Fatal(err)
		}
	}
	fullFriends := fmt.Sprintf("user %d has 2 friends, the most allowed", alice.id)
	limit(alice.c.AddFriend(ctx, dave.id), fullFriends)
	limit(dave.c.AddFriend(ctx, alice.id), fullFriends) // the other side
	wantErrno(t, alice.c.AddFriend(ctx, bob.id), codec.ErrnoConflict)
	if err := dave.c.AddFriend(ctx, erin.id); err != nil {
		t.Fatal(err)
	}

	for _, name := range []string{"a1", "a2"} {
		if _, err := alice.c.CreateGroup(ctx, name, ""); err != nil {
			t.Fatal(err)
		}
	}
	fullGroups := fmt.Sprintf("user %d is in 2 groups, the most allowed", alice.id)
	_, err := alice.c.CreateGroup(ctx, "a3", "")
	limit(err, fullGroups)
	gid, err := bob.c.CreateGroup(ctx, "b1", "")
	if err != nil {
		t.Fatal(err)
	}
	limit(alice.c.AddGroup(ctx, gid), fullGroups)
	for _, m := range []*user{carol, dave} {
		if err := m.c.AddGroup(ctx, gid); err != nil {
			t.Fatal(err)
		}
	}
	limit(erin.c.AddGroup(ctx, gid), fmt.Sprintf("group %d has 3 members, the most allowed", gid))
	wantErrno(t, carol.c.AddGroup(ctx, gid), codec.ErrnoConflict)
	ts.relogin(erin, client.Options{})
	if len(erin.ack.Groups) != 0 {
		t.Fatalf("erin's groups after a refused join: %+v", erin.ack.Groups)
	}
	ts.relogin(dave, client.Options{})
	if g := groupOf(t, dave.ack, gid); g.Size != 3 || len(g.Users) != 3 {
		t.Fatalf("dave's view of the full group: %+v", g)
	}
}
