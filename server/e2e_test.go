package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatcluster/chatcluster/client"
	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/conf"
	"github.com/chatcluster/chatcluster/service"
)

func TestSignupAndLoginErrors(t *testing.T) {
	ts := startServer(t, nil)
	c := ts.dial(client.Options{})
	ctx := ctxT(t)
	id, err := c.Signup(ctx, "alice", "secret1")
	if err != nil || id <= 0 {
		t.Fatalf("signup: %d %v", id, err)
	}
	// The original answered a duplicate signup with "ok, id -1".
	_, err = c.Signup(ctx, "alice", "other-pw")
	wantErrno(t, err, codec.ErrnoConflict)
	for _, bad := range []struct{ name, pw string }{
		{"", "secret1"}, {strings.Repeat("n", 51), "secret1"}, {"tab\tname", "secret1"}, {"   ", "secret1"},
		{"bob", "short"}, {"bob", strings.Repeat("p", 73)}, {"evil\u202egnp.exe", "secret1"},
	} {
		_, err := c.Signup(ctx, bad.name, bad.pw)
		wantErrno(t, err, codec.ErrnoBadRequest)
	}
	if _, err := c.Signup(ctx, strings.Repeat("é", 50), "secret1"); err != nil {
		t.Fatalf("50-character name: %v", err)
	}
	_, err = c.Login(ctx, id, "wrong-pw")
	wantErrno(t, err, codec.ErrnoAuth)
	_, err = c.Login(ctx, 999999, "secret1")
	wantErrno(t, err, codec.ErrnoAuth)
	// bcrypt reads a password's first 72 bytes only: a longer one is not
	// the 72-byte password it starts with.
	long := strings.Repeat("p", 72)
	longID, err := c.Signup(ctx, "longpw", long)
	if err != nil {
		t.Fatal(err)
	}
	for _, pw := range []string{long + "-and-more", long + "p"} {
		_, err = c.Login(ctx, longID, pw)
		wantErrno(t, err, codec.ErrnoAuth)
	}
	if _, err := ts.dial(client.Options{}).Login(ctx, longID, long); err != nil {
		t.Fatalf("login with the 72-byte password: %v", err)
	}
	r, err := c.Do(ctx, map[string]any{"msgid": 1, "id": id})
	if err != nil || r.Errno != codec.ErrnoBadRequest || r.Header.MsgID != codec.MsgLoginAck {
		t.Fatalf("login without password: %+v %v", r, err)
	}
	ack, err := c.Login(ctx, id, "secret1")
	if err != nil || ack.ID != id || ack.Name != "alice" || ack.Token == "" {
		t.Fatalf("login: %+v %v", ack, err)
	}
	_, err = c.Login(ctx, id, "secret1")
	wantErrno(t, err, codec.ErrnoConflict) // already logged in on this connection

	// Passwords are stored as bcrypt hashes, never in plain text.
	var stored []byte
	if err := ts.App.Store.DB().Get(&stored, "SELECT password FROM users WHERE id = ?", id); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(stored), "secret1") || !strings.HasPrefix(string(stored), "$2") {
		t.Fatalf("stored password is not a bcrypt hash: %q", stored)
	}
}

// LOGIN_ACK names the node the session is on: the configured -node-id, or
// by default the host name and the listen port (random hex for port 0).
func TestLoginAckNode(t *testing.T) {
	host, _ := os.Hostname()
	if host == "" {
		host = "node" // DefaultNodeID's stand-in
	}
	for _, nodeID := range []string{"chat7", ""} {
		ts := startServer(t, func(c *conf.Config) { c.NodeID = nodeID })
		c := ts.dial(client.Options{})
		ctx := ctxT(t)
		id, err := c.Signup(ctx, "nodeuser", "secret1")
		if err != nil {
			t.Fatal(err)
		}
		ack, err := c.Login(ctx, id, "secret1")
		if err != nil {
			t.Fatal(err)
		}
		ok := ack.Node == nodeID
		if nodeID == "" {
			port, found := strings.CutPrefix(ack.Node, host+":")
			ok = found && port != ""
		}
		if !ok {
			t.Fatalf("-node-id %q: LOGIN_ACK node %q", nodeID, ack.Node)
		}
	}
}

func TestRequestsBeforeLogin(t *testing.T) {
	ts := startServer(t, nil)
	c := ts.dial(client.Options{})
	for _, req := range []map[string]any{
		{"msgid": 3}, {"msgid": 6, "toid": 1, "msg": "x"}, {"msgid": 7, "friendid": 1},
		{"msgid": 8, "groupname": "g", "groupdesc": "d"}, {"msgid": 9, "groupid": 1},
		{"msgid": 10, "groupid": 1, "msg": "x"}, {"msgid": 12, "seq": 1},
	} {
		r, err := c.Do(ctxT(t), req)
		if err != nil || r.Errno != codec.ErrnoNotLoggedIn || r.Ack != codec.MsgID(req["msgid"].(int)) {
			t.Fatalf("%v: %+v %v", req, r, err)
		}
	}
	if err := c.Ping(ctxT(t)); err != nil {
		t.Fatalf("ping before login: %v", err)
	}
	r, err := c.Do(ctxT(t), map[string]any{"msgid": 99})
	if err != nil || r.Errno != codec.ErrnoBadRequest || r.Ack != 99 {
		t.Fatalf("unknown msgid: %+v %v", r, err)
	}
}

func TestOneChatIdentityFromSession(t *testing.T) {
	ts := startServer(t, nil)
	alice := ts.newUser("alice", client.Options{})
	bob := ts.newUser("bob", client.Options{})
	ctx := ctxT(t)
	ack, err := alice.c.Chat(ctx, bob.id, "hello bob")
	if err != nil || ack.Time == "" {
		t.Fatalf("chat: %+v %v", ack, err)
	}
	d := next(t, bob.c)
	if d.MsgID != codec.MsgOneChat || d.ID != alice.id || d.Name != "alice" || d.ToID != bob.id || d.Msg != "hello bob" || d.Seq != 1 || d.Time != ack.Time {
		t.Fatalf("delivery %+v", d)
	}
	// A spoofed sender id and name are ignored: identity is the session's.
	r, err := alice.c.Do(ctx, map[string]any{"msgid": 6, "id": bob.id, "name": "bob", "toid": bob.id, "msg": "spoof"})
	if err != nil || r.Errno != 0 {
		t.Fatalf("spoof send: %+v %v", r, err)
	}
	if d := next(t, bob.c); d.ID != alice.id || d.Name != "alice" || d.Msg != "spoof" || d.Seq != 2 {
		t.Fatalf("spoofed delivery %+v", d)
	}
	_, err = alice.c.Chat(ctx, 424242, "nobody")
	wantErrno(t, err, codec.ErrnoNotFound)
	_, err = alice.c.Chat(ctx, bob.id, "")
	wantErrno(t, err, codec.ErrnoBadRequest)
	_, err = alice.c.Chat(ctx, bob.id, strings.Repeat("x", 4097))
	wantErrno(t, err, codec.ErrnoBadRequest)
	r, err = alice.c.Do(ctx, map[string]any{"msgid": 6, "toid": "bob", "msg": "typed"})
	if err != nil || r.Errno != codec.ErrnoBadRequest || r.Ack != codec.MsgOneChat {
		t.Fatalf("mistyped toid: %+v %v", r, err)
	}
	none(t, bob.c)
}

// TestIdentityFromSessionEveryRequest: the original took the acting user
// from the request's "id" for every request. Here a logged-in session acts
// as its own user whatever "id" (or "name") a request carries.
func TestIdentityFromSessionEveryRequest(t *testing.T) {
	ts := startServer(t, nil)
	alice := ts.newUser("alice", client.Options{})
	bob := ts.newUser("bob", client.Options{})
	carol := ts.newUser("carol", client.Options{})
	ctx := ctxT(t)
	st := ts.App.Store
	carols, err := carol.c.CreateGroup(ctx, "carols", "")
	if err != nil {
		t.Fatal(err)
	}
	do := func(req map[string]any) *codec.Ack {
		t.Helper()
		req["id"], req["name"] = int64(bob.id), "bob" // as if alice were bob
		r, err := alice.c.Do(ctx, req)
		if err != nil || r.Errno != codec.OK {
			t.Fatalf("%v: %+v %v", req, r, err)
		}
		var ack codec.Ack
		if err := r.Decode(&ack); err != nil {
			t.Fatal(err)
		}
		return &ack
	}
	memberOf := func(uid codec.UserID, gid codec.GroupID) bool {
		t.Helper()
		groups, err := st.UserGroups(ctx, uid)
		if err != nil {
			t.Fatal(err)
		}
		return slices.ContainsFunc(groups, func(g service.Group) bool { return g.ID == gid })
	}

	do(map[string]any{"msgid": codec.MsgAddFriend, "friendid": int64(carol.id)})
	for uid, want := range map[codec.UserID]bool{alice.id: true, bob.id: false} {
		friends, err := st.Friends(ctx, uid)
		if err != nil {
			t.Fatal(err)
		}
		if got := slices.ContainsFunc(friends, func(m service.Member) bool { return m.ID == carol.id }); got != want {
			t.Errorf("ADD_FRIEND: carol among user %d's friends: %v, want %v", uid, got, want)
		}
	}

	gid := do(map[string]any{"msgid": codec.MsgCreateGroup, "groupname": "spoofed", "groupdesc": "d"}).GroupID
	members, err := st.GroupMembers(ctx, gid)
	if err != nil || len(members) != 1 || members[0].ID != alice.id || members[0].Role != codec.RoleCreator {
		t.Fatalf("CREATE_GROUP: members %+v (%v), want alice as creator", members, err)
	}

	do(map[string]any{"msgid": codec.MsgAddGroup, "groupid": int64(carols)})
	if !memberOf(alice.id, carols) || memberOf(bob.id, carols) {
		t.Fatalf("ADD_GROUP: alice in %v, bob in %v; want alice only", memberOf(alice.id, carols), memberOf(bob.id, carols))
	}

	do(map[string]any{"msgid": codec.MsgGroupChat, "groupid": int64(carols), "msg": "as alice"})
	if d := next(t, carol.c); d.ID != alice.id || d.Name != "alice" || d.GroupID != carols || d.Msg != "as alice" {
		t.Fatalf("GROUP_CHAT delivered as %+v", d)
	}

	// LOGINOUT with bob's id logs alice out, not bob.
	do(map[string]any{"msgid": codec.MsgLogout})
	r, err := alice.c.Do(ctx, map[string]any{"msgid": codec.MsgOneChat, "toid": int64(carol.id), "msg": "x"})
	if err != nil || r.Errno != codec.ErrnoNotLoggedIn {
		t.Fatalf("alice after LOGINOUT: %+v %v", r, err)
	}
	if _, err := carol.c.Chat(ctx, bob.id, "still there?"); err != nil {
		t.Fatal(err)
	}
	if d := next(t, bob.c); d.ID != carol.id || d.Msg != "still there?" {
		t.Fatalf("bob after alice's spoofed LOGINOUT got %+v", d)
	}
}

// A DELIVERED that names another user's id acknowledges the session's
// own inbox, never the other user's.
func TestDeliveredIdentityFromSession(t *testing.T) {
	ts := startServer(t, nil)
	carol := ts.newUser("carol", client.Options{})
	bob := ts.newUser("bob", client.Options{ManualAck: true})
	r := ts.raw()
	alice := codec.UserID(rawLogin(t, r, "alice"))
	ctx := ctxT(t)
	for range 2 {
		if _, err := carol.c.Chat(ctx, alice, "to alice"); err != nil {
			t.Fatal(err)
		}
		if _, err := carol.c.Chat(ctx, bob.id, "to bob"); err != nil {
			t.Fatal(err)
		}
	}
	r.mustRead()
	r.mustRead()
	next(t, bob.c)
	next(t, bob.c)
	r.send(map[string]any{"msgid": 12, "id": int64(bob.id), "seq": 2})
	checkFor(t, 5*time.Second, func() error {
		if _, acked, err := ts.App.Store.InboxState(ctx, alice); err != nil || acked != 2 {
			return fmt.Errorf("alice acked %d (%v), want 2", acked, err)
		}
		return nil
	})
	if _, acked, err := ts.App.Store.InboxState(ctx, bob.id); err != nil || acked != 0 {
		t.Fatalf("bob's inbox acknowledged to %d by alice's DELIVERED (%v)", acked, err)
	}
}

func TestFriends(t *testing.T) {
	ts := startServer(t, nil)
	alice := ts.newUser("alice", client.Options{})
	bob := ts.newUser("bob", client.Options{})
	carol := ts.newUser("carol", client.Options{})
	ctx := ctxT(t)
	if err := alice.c.AddFriend(ctx, bob.id); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, alice.c.AddFriend(ctx, bob.id), codec.ErrnoConflict)
	wantErrno(t, bob.c.AddFriend(ctx, alice.id), codec.ErrnoConflict) // friendship is mutual
	wantErrno(t, alice.c.AddFriend(ctx, 98765), codec.ErrnoNotFound)
	wantErrno(t, alice.c.AddFriend(ctx, alice.id), codec.ErrnoBadRequest)
	if err := alice.c.AddFriend(ctx, carol.id); err != nil {
		t.Fatal(err)
	}
	carol.c.Close()
	checkFor(t, 5*time.Second, func() error {
		alice.c.Close()
		ts.relogin(alice, client.Options{})
		want := []codec.Friend{{ID: bob.id, Name: "bob", State: "online"}, {ID: carol.id, Name: "carol", State: "offline"}}
		if fmt.Sprint(alice.ack.Friends) != fmt.Sprint(want) {
			return fmt.Errorf("friends %+v, want %+v", alice.ack.Friends, want)
		}
		return nil
	})
}

func TestGroups(t *testing.T) {
	ts := startServer(t, nil)
	ctx := ctxT(t)
	users := make([]*user, 5)
	for i := range users {
		users[i] = ts.newUser(fmt.Sprintf("u%d", i), client.Options{})
	}
	owner, outsider := users[0], users[4]
	gid, err := owner.c.CreateGroup(ctx, "devs", "we build")
	if err != nil || gid <= 0 {
		t.Fatalf("create: %d %v", gid, err)
	}
	_, err = users[1].c.CreateGroup(ctx, "devs", "again")
	wantErrno(t, err, codec.ErrnoConflict)
	_, err = users[1].c.CreateGroup(ctx, "", "empty")
	wantErrno(t, err, codec.ErrnoBadRequest)
	_, err = users[1].c.CreateGroup(ctx, "devs\u2067sved", "a bidirectional control")
	wantErrno(t, err, codec.ErrnoBadRequest)
	for _, u := range users[1:4] {
		if err := u.c.AddGroup(ctx, gid); err != nil {
			t.Fatal(err)
		}
	}
	wantErrno(t, users[1].c.AddGroup(ctx, gid), codec.ErrnoConflict)
	wantErrno(t, users[1].c.AddGroup(ctx, 5555), codec.ErrnoNotFound)
	_, err = outsider.c.GroupChat(ctx, gid, "let me in")
	wantErrno(t, err, codec.ErrnoForbidden)
	_, err = owner.c.GroupChat(ctx, 5555, "nowhere")
	wantErrno(t, err, codec.ErrnoNotFound)

	ack, err := users[2].c.GroupChat(ctx, gid, "hi all")
	if err != nil || ack.GroupID != gid || ack.Time == "" {
		t.Fatalf("group chat: %+v %v", ack, err)
	}
	for i, u := range users[:4] {
		if i == 2 {
			continue
		}
		d := next(t, u.c)
		if d.MsgID != codec.MsgGroupChat || d.GroupID != gid || d.ID != users[2].id || d.Name != "u2" || d.Msg != "hi all" || d.GSeq != 1 || d.Seq != 0 {
			t.Fatalf("%s got %+v", u.name, d)
		}
	}
	none(t, users[2].c) // not to the sender
	none(t, outsider.c)

	users[3].c.Close()
	ts.relogin(users[3], client.Options{})
	g := users[3].ack.Groups
	if len(g) != 1 || g[0].ID != gid || g[0].Name != "devs" || g[0].Desc != "we build" || len(g[0].Users) != 4 {
		t.Fatalf("login groups %+v", g)
	}
	if g[0].Users[0].ID != owner.id || g[0].Users[0].Role != codec.RoleCreator || g[0].Users[1].Role != codec.RoleNormal || g[0].Users[0].State != codec.StateOnline {
		t.Fatalf("group users %+v", g[0].Users)
	}
}

func TestOfflineDeliveryAndRedelivery(t *testing.T) {
	ts := startServer(t, func(c *conf.Config) { c.OfflineCap = 5 })
	ctx := ctxT(t)
	alice := ts.newUser("alice", client.Options{})
	bob := ts.newUser("bob", client.Options{ManualAck: true})
	bob.c.Close()
	for i := 1; i <= 12; i++ {
		if _, err := alice.c.Chat(ctx, bob.id, fmt.Sprintf("m%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	// Login: 5 in LOGIN_ACK, the other 7 right after, in order.
	ts.relogin(bob, client.Options{ManualAck: true})
	if n := len(bob.ack.OfflineMsg); n != 5 || bob.ack.OfflineMsg[0].Msg != "m1" {
		t.Fatalf("offlineMsg: %d entries %+v", n, bob.ack.OfflineMsg)
	}
	// The original deleted offline messages once it had sent them: here a
	// client that drops the connection without acknowledging gets them all
	// again at its next login.
	bob.c.Close()
	ts.relogin(bob, client.Options{ManualAck: true})
	if n := len(bob.ack.OfflineMsg); n != 5 || bob.ack.OfflineMsg[0].Seq != 1 || bob.ack.OfflineMsg[0].Msg != "m1" {
		t.Fatalf("offlineMsg after a login left unacknowledged: %d entries %+v", n, bob.ack.OfflineMsg)
	}
	if _, acked, err := ts.App.Store.InboxState(ctx, bob.id); acked != 0 || err != nil {
		t.Fatalf("acked %d (%v) with nothing acknowledged", acked, err)
	}
	live, err := alice.c.Chat(ctx, bob.id, "m13")
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 13; i++ {
		d := next(t, bob.c)
		if d.Seq != codec.Seq(i) || d.Msg != fmt.Sprintf("m%d", i) {
			t.Fatalf("delivery %d: %+v", i, d)
		}
		if i == 13 && d.Time != live.Time {
			t.Fatalf("live delivery time %q, ack time %q", d.Time, live.Time)
		}
	}
	// Acknowledge up to 8 only, then drop the connection: 9..13 come again.
	bob.c.Ack(8)
	checkFor(t, 5*time.Second, func() error {
		_, acked, err := ts.App.Store.InboxState(ctx, bob.id)
		if acked != 8 {
			return fmt.Errorf("acked %d %v", acked, err)
		}
		return nil
	})
	bob.c.Close()
	ts.relogin(bob, client.Options{})
	if n := len(bob.ack.OfflineMsg); n != 5 || bob.ack.OfflineMsg[0].Seq != 9 || bob.ack.OfflineMsg[4].Msg != "m13" {
		t.Fatalf("redelivery: %+v", bob.ack.OfflineMsg)
	}
	// Stored messages are never deleted by delivery.
	if rows, err := ts.App.Store.Inbox(context.Background(), bob.id, 0, 100); len(rows) != 13 || err != nil {
		t.Fatalf("inbox rows %d (%v)", len(rows), err)
	}
}

// Group messages are stored once, in the group's log, and delivered as
// msgid 10 with gseq: a member's backlog follows LOGIN_ACK after a
// reconnect, a member who joins later starts at the log's end, the sender's
// own messages are passed over (no gap, no echo), and DELIVERED with
// groupid and gseq moves the member's position.
func TestGroupLogDelivery(t *testing.T) {
	ts := startServer(t, nil)
	ctx := ctxT(t)
	owner := ts.newUser("owner", client.Options{})
	bob := ts.newUser("bob", client.Options{ManualAck: true})
	gid, err := owner.c.CreateGroup(ctx, "g", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := bob.c.AddGroup(ctx, gid); err != nil {
		t.Fatal(err)
	}
	bob.c.Close()
	for i := 1; i <= 3; i++ {
		ack, err := owner.c.GroupChat(ctx, gid, fmt.Sprintf("g%d", i))
		if err != nil || ack.GSeq != codec.Seq(i) {
			t.Fatalf("send %d: %+v %v", i, ack, err)
		}
	}
	ts.relogin(bob, client.Options{ManualAck: true})
	if len(bob.ack.OfflineMsg) != 0 {
		t.Fatalf("group backlog inside offlineMsg: %+v", bob.ack.OfflineMsg)
	}
	for i := 1; i <= 3; i++ {
		d := next(t, bob.c)
		if d.MsgID != codec.MsgGroupChat || d.GroupID != gid || d.GSeq != codec.Seq(i) || d.Seq != 0 || d.Msg != fmt.Sprintf("g%d", i) || d.ID != owner.id {
			t.Fatalf("backlog %d: %+v", i, d)
		}
	}
	carol := ts.newUser("carol", client.Options{})
	if err := carol.c.AddGroup(ctx, gid); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.c.GroupChat(ctx, gid, "from bob"); err != nil {
		t.Fatal(err)
	}
	for _, u := range []*user{owner, carol} {
		if d := next(t, u.c); d.GSeq != 4 || d.Msg != "from bob" || d.ID != bob.id {
			t.Fatalf("%s got %+v, want gseq 4 from bob", u.name, d)
		}
	}
	if _, err := owner.c.GroupChat(ctx, gid, "g5"); err != nil {
		t.Fatal(err)
	}
	if d := next(t, bob.c); d.GSeq != 5 || d.Msg != "g5" {
		t.Fatalf("bob got %+v, want gseq 5 (his own 4 passed over)", d)
	}
	if d := next(t, carol.c); d.GSeq != 5 {
		t.Fatalf("carol got %+v, want gseq 5 (she joined after 3)", d)
	}
	none(t, bob.c)
	none(t, carol.c)
	// Acknowledge up to 2 only: 3 and 5 come again, bob's own 4 does not.
	bob.c.AckGroup(gid, 2)
	checkFor(t, 5*time.Second, func() error {
		gs, err := ts.App.Store.UserGroups(ctx, bob.id)
		if err != nil || len(gs) != 1 || gs[0].Acked != 2 || gs[0].Last != 5 {
			return fmt.Errorf("bob's groups %+v %v", gs, err)
		}
		return nil
	})
	bob.c.Close()
	ts.relogin(bob, client.Options{ManualAck: true})
	for _, want := range []codec.Seq{3, 5} {
		if d := next(t, bob.c); d.GSeq != want {
			t.Fatalf("redelivery: %+v, want gseq %d", d, want)
		}
	}
	none(t, bob.c)
	// Stored once: five log rows, no inbox rows.
	var logRows, inboxRows int
	ts.App.Store.DB().Get(&logRows, "SELECT COUNT(*) FROM group_log WHERE groupid = ?", gid)
	ts.App.Store.DB().Get(&inboxRows, "SELECT (SELECT COUNT(*) FROM inbox) + (SELECT COUNT(*) FROM inbox_log0) + (SELECT COUNT(*) FROM inbox_log1)")
	if logRows != 5 || inboxRows != 0 {
		t.Fatalf("group_log rows %d, inbox rows %d; want 5 and 0", logRows, inboxRows)
	}
}

func TestKickedSession(t *testing.T) {
	ts := startServer(t, nil)
	alice := ts.newUser("alice", client.Options{})
	bob := ts.newUser("bob", client.Options{})
	first := bob.c
	ts.relogin(bob, client.Options{})
	select {
	case <-first.Kicked():
	case <-time.After(5 * time.Second):
		t.Fatal("old session not kicked")
	}
	<-first.Done()
	if !errors.Is(first.Err(), client.ErrKicked) {
		t.Fatalf("old session error %v", first.Err())
	}
	if _, err := alice.c.Chat(ctxT(t), bob.id, "to the new one"); err != nil {
		t.Fatal(err)
	}
	if d := next(t, bob.c); d.Msg != "to the new one" {
		t.Fatalf("got %+v", d)
	}
}

func TestTokenLoginAndLogout(t *testing.T) {
	ts := startServer(t, nil)
	ctx := ctxT(t)
	bob := ts.newUser("bob", client.Options{})
	token := bob.ack.Token
	c2 := ts.dial(client.Options{})
	_, err := c2.LoginToken(ctx, bob.id, token+"x")
	wantErrno(t, err, codec.ErrnoAuth)
	alice := ts.newUser("alice", client.Options{})
	_, err = c2.LoginToken(ctx, alice.id, token) // another user's token
	wantErrno(t, err, codec.ErrnoAuth)
	ack, err := c2.LoginToken(ctx, bob.id, token)
	if err != nil || ack.ID != bob.id {
		t.Fatalf("token login: %+v %v", ack, err)
	}
	<-bob.c.Done() // kicked by the token login
	if err := c2.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	// Logged out: requests need a login again, and the token is revoked.
	_, err = c2.Chat(ctx, alice.id, "after logout")
	wantErrno(t, err, codec.ErrnoNotLoggedIn)
	_, err = c2.LoginToken(ctx, bob.id, token)
	wantErrno(t, err, codec.ErrnoAuth)
	if _, err := c2.Login(ctx, bob.id, bob.password); err != nil {
		t.Fatalf("password login after logout on the same connection: %v", err)
	}
}

func TestClientMsgIDRetry(t *testing.T) {
	ts := startServer(t, nil)
	ctx := ctxT(t)
	alice := ts.newUser("alice", client.Options{})
	bob := ts.newUser("bob", client.Options{})
	first, err := alice.c.ChatWithID(ctx, bob.id, "once", "cmid-1")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // so a new time would differ
	again, err := alice.c.ChatWithID(ctx, bob.id, "once", "cmid-1")
	if err != nil || again.Time != first.Time {
		t.Fatalf("retry ack %+v (first %+v) %v", again, first, err)
	}
	gid, _ := alice.c.CreateGroup(ctx, "g", "")
	bob.c.AddGroup(ctx, gid)
	if _, err := alice.c.GroupChatWithID(ctx, gid, "group once", "cmid-2"); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.c.GroupChatWithID(ctx, gid, "group once", "cmid-2"); err != nil {
		t.Fatal(err)
	}
	if d := next(t, bob.c); d.Msg != "once" || d.Seq != 1 {
		t.Fatalf("got %+v", d)
	}
	if d := next(t, bob.c); d.Msg != "group once" || d.GSeq != 1 || d.Seq != 0 {
		t.Fatalf("got %+v", d)
	}
	none(t, bob.c)
}

// TestManyPairs is the scenario that lost 20 of 136 messages on the original:
// many pairs chatting at once, every message delivered once, in order.
func TestManyPairs(t *testing.T) {
	ts := startServer(t, nil)
	const pairs, perPair = 20, 50
	type pair struct{ from, to *user }
	ps := make([]pair, pairs)
	for i := range ps {
		ps[i] = pair{ts.newUser(fmt.Sprintf("s%d", i), client.Options{}), ts.newUser(fmt.Sprintf("r%d", i), client.Options{})}
	}
	var wg sync.WaitGroup
	errs := make(chan error, pairs*2)
	for _, p := range ps {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for j := 0; j < perPair; j++ {
				if _, err := p.from.c.Chat(context.Background(), p.to.id, fmt.Sprint(j)); err != nil {
					errs <- err
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			for j := 1; j <= perPair; j++ {
				select {
				case d := <-p.to.c.Deliveries():
					if d.Seq != codec.Seq(j) || d.ID != p.from.id || d.Msg != fmt.Sprint(j-1) {
						errs <- fmt.Errorf("%s: delivery %d = %+v", p.to.name, j, d)
						return
					}
				case <-time.After(20 * time.Second):
					errs <- fmt.Errorf("%s: only %d of %d delivered", p.to.name, j-1, perPair)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d pairs x %d messages: all delivered once, in order", pairs, perPair)
}

// A client that stops reading (but keeps its connection alive with PINGs)
// is closed once it has taken nothing for idle-timeout; meanwhile what
// it was sent waits in the store, not in the server's memory, the sender
// is not held up, and nothing is lost: the messages wait in the inbox for
// the next login.
func TestSlowConsumerClosed(t *testing.T) {
	ts := startServer(t, func(c *conf.Config) { c.MaxOutbound = 64 << 10; c.Rate = -1; c.IdleTimeout = 2 * time.Second })
	ctx := ctxT(t)
	alice := ts.newUser("alice", client.Options{})
	bob := ts.newUser("bob", client.Options{})
	bob.c.Close()
	r := ts.raw()
	if err := r.c.(*net.TCPConn).SetReadBuffer(32 << 10); err != nil {
		t.Fatal(err)
	}
	r.send(map[string]any{"msgid": codec.MsgLogin, "id": bob.id, "password": bob.password})
	if m := r.mustRead(); num(m, "errno") != 0 {
		t.Fatalf("raw login: %v", m)
	}
	stop := make(chan struct{})
	defer close(stop)
	go pingUnread(r, stop)
	// bob's raw connection reads nothing more. 2,000 messages of 4000
	// bytes (8 MB) overflow the kernel's socket buffers (at most 4 MiB for
	// sending, and the receiver's, kept small).
	const n, workers = 2000, 8
	text := strings.Repeat("z", 4000)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				if _, err := alice.c.Chat(ctx, bob.id, text); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("sender held up or refused: %v", err)
	}
	checkFor(t, 10*time.Second, func() error {
		if !ts.Logged("closing slow consumer") || !ts.Logged("took nothing for 2s") {
			return errors.New("the connection is not closed as a slow consumer")
		}
		return nil
	})
	// Reading what the kernel buffered ends in EOF (possibly mid-frame) or
	// a reset, not in the read deadline.
	r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, r.c); err != nil && !isReset(err) {
		t.Fatalf("slow consumer not closed: %v", err)
	}
	// Every message is still delivered, once, in order, at the next login.
	// (The client library hands LOGIN_ACK's offline messages out first.)
	ts.relogin(bob, client.Options{})
	var got codec.Seq
	for got < n {
		d := next(t, bob.c)
		if d.Seq != got+1 {
			t.Fatalf("seq %d after %d", d.Seq, got)
		}
		got = d.Seq
	}
}

// TestBacklogAtClientPace: a long backlog after a login goes out at the
// pace the client reads it. A client that reads slowly is not closed as a
// slow consumer (which would cut it off again at every login), and gets
// everything, in order.
func TestBacklogAtClientPace(t *testing.T) {
	ts := startServer(t, func(c *conf.Config) { c.MaxOutbound = 64 << 10; c.Rate = -1 })
	const n = 2000
	r := loginWithBacklog(t, ts, n)
	got := 0
	seq := func(m map[string]any) {
		if s := num(m, "seq"); s != got+1 {
			t.Fatalf("seq %d after %d", s, got)
		}
		got++
	}
	ack := r.mustRead()
	offline, _ := ack["offlineMsg"].([]any)
	for _, d := range offline {
		seq(d.(map[string]any))
	}
	time.Sleep(500 * time.Millisecond) // the client is busy for a moment
	for got < n {
		if got%50 == 0 {
			time.Sleep(20 * time.Millisecond) // a slow reader: 2.5 MB/s at most
		}
		m, err := r.read()
		if err != nil {
			t.Fatalf("after %d of %d: %v (closed as a slow consumer: %v)", got, n, err, ts.Logged("closing slow consumer"))
		}
		seq(m)
	}
	if ts.Logged("closing slow consumer") {
		t.Fatal("a connection was closed as a slow consumer")
	}
}

// loginWithBacklog gives a new user bob n messages of 4,000 bytes while
// offline (2,000 is 8 MB, more than the kernel's socket buffers hold: at
// most 4 MiB for sending, and bob's receive buffer is kept small), then
// sends bob's LOGIN on a bare connection, which it returns. Each more
// function is called with bob's and alice's ids before the login.
func loginWithBacklog(t *testing.T, ts *testServer, n int, more ...func(bob, alice codec.UserID)) *raw {
	t.Helper()
	alice := ts.newUser("alice", client.Options{})
	bob := ts.newUser("bob", client.Options{})
	bob.c.Close()
	backlog(t, alice, bob.id, n, 4000)
	for _, f := range more {
		f(bob.id, alice.id)
	}
	r := ts.raw()
	if err := r.c.(*net.TCPConn).SetReadBuffer(32 << 10); err != nil {
		t.Fatal(err)
	}
	r.send(map[string]any{"msgid": codec.MsgLogin, "id": bob.id, "password": bob.password})
	return r
}

// backlog sends n messages of size bytes from u to to, 8 at a time.
func backlog(t *testing.T, u *user, to codec.UserID, n, size int) {
	t.Helper()
	text := strings.Repeat("z", size)
	var wg sync.WaitGroup
	const workers = 8
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				if _, err := u.c.Chat(ctxT(t), to, text); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestBacklogHoldsNoWorker: a backlog waiting for a client that does not
// read holds none of the request workers: with one worker, other clients
// are still served, and the server stops at once.
func TestBacklogHoldsNoWorker(t *testing.T) {
	ts := startServer(t, func(c *conf.Config) { c.MaxOutbound = 64 << 10; c.Rate = -1; c.Workers = 1 })
	r := loginWithBacklog(t, ts, 2000)
	if m := r.mustRead(); num(m, "msgid") != int(codec.MsgLoginAck) || num(m, "errno") != 0 {
		t.Fatalf("login: %v", m)
	}
	// bob's client reads nothing more: the rest of the backlog waits.
	c := ts.dial(client.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Signup(ctx, "carol", "password-carol"); err != nil {
		t.Fatalf("another client's signup while bob's backlog waits: %v", err)
	}
	stopped := make(chan struct{})
	go func() { ts.stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("the server did not stop while bob's backlog waited")
	}
}
