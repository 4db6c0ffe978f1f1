package service

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/pubsub"
)

// loginStore is a fakeStore where any user can log in with "secret1".
type loginStore struct {
	*fakeStore
	hash []byte
}

func newLoginStore(t *testing.T) *loginStore {
	t.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte("secret1"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return &loginStore{fakeStore: newFakeStore(), hash: hash}
}

func (l *loginStore) User(_ context.Context, id codec.UserID) (User, error) {
	return User{ID: id, Name: "u", PasswordHash: l.hash}, nil
}
func (l *loginStore) Friends(context.Context, codec.UserID) ([]Member, error)   { return nil, nil }
func (l *loginStore) UserGroups(context.Context, codec.UserID) ([]Group, error) { return nil, nil }
func (l *loginStore) InboxState(context.Context, codec.UserID) (codec.Seq, codec.Seq, error) {
	return 0, 0, nil
}

// heldBus is the in-process bus whose first SetOnline waits until release
// is closed (entered is closed when it starts waiting); it remembers the
// session each user's presence names, as another node would read it.
type heldBus struct {
	*pubsub.Memory
	once     sync.Once
	entered  chan struct{}
	release  chan struct{}
	mu       sync.Mutex
	presence map[codec.UserID]string
}

func newHeldBus() *heldBus {
	return &heldBus{Memory: pubsub.NewMemory(), entered: make(chan struct{}), release: make(chan struct{}),
		presence: map[codec.UserID]string{}}
}

func (b *heldBus) SetOnline(ctx context.Context, uid codec.UserID, session string) error {
	held := false
	b.once.Do(func() { held = true })
	if held {
		close(b.entered)
		<-b.release
	}
	b.mu.Lock()
	b.presence[uid] = session
	b.mu.Unlock()
	return b.Memory.SetOnline(ctx, uid, session)
}

func (b *heldBus) SetOffline(ctx context.Context, uid codec.UserID, session string) error {
	b.mu.Lock()
	if b.presence[uid] == session {
		delete(b.presence, uid)
	}
	b.mu.Unlock()
	return b.Memory.SetOffline(ctx, uid, session)
}

func (b *heldBus) named(uid codec.UserID) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.presence[uid]
}

// loginLater starts a LOGIN of user 5 on a new session and returns the
// session and a channel closed when the login's Handle returns.
func loginLater(n *Node) (*Session, chan struct{}) {
	s := n.Open(&countFrames{})
	done := make(chan struct{})
	go func() {
		n.Handle(s, []byte(`{"msgid":1,"id":5,"password":"secret1"}`))
		close(done)
	}()
	return s, done
}

func newLoginNode(t *testing.T, bus pubsub.Bus) *Node {
	t.Helper()
	n, err := New(context.Background(), Config{Store: newLoginStore(t), Bus: bus, BcryptCost: bcrypt.MinCost})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	return n
}

// raceLogins runs two logins of user 5 on n at once, the first one's
// presence write held until the second has had the chance to overtake it,
// and returns the session that stays logged in and the other.
func raceLogins(t *testing.T, n *Node, bus *heldBus) (live, other *Session) {
	t.Helper()
	a, aDone := loginLater(n)
	<-bus.entered // a is in the hub; its presence write waits
	b, bDone := loginLater(n)
	time.Sleep(20 * time.Millisecond) // give b the chance to overtake a
	close(bus.release)
	<-aDone
	<-bDone
	ua, _ := a.User()
	ub, _ := b.User()
	if (ua == 5) == (ub == 5) {
		t.Fatalf("logged in: a %d, b %d; want exactly one session of user 5", ua, ub)
	}
	if ub == 5 {
		return b, a
	}
	return a, b
}

// Two logins of one user on one node at once: presence must end up naming
// the session that stays logged in. (Unordered, the first login's write
// could land last and leave presence naming the kicked session: the user
// would read online forever, and another node's login would kick the
// wrong session.)
func TestConcurrentLoginsOfOneUser(t *testing.T) {
	const uid = codec.UserID(5)
	t.Run("presence", func(t *testing.T) {
		bus := newHeldBus()
		n := newLoginNode(t, bus)
		live, other := raceLogins(t, n, bus)
		if got := bus.named(uid); got != live.id.String() {
			t.Fatalf("presence names session %q, the live session is %q", got, live.id.String())
		}
		if n.hub.get(uid) != live {
			t.Fatal("the hub does not hold the live session")
		}
		n.Closed(other)
		n.Closed(live)
		if on, _ := bus.Online(context.Background(), []codec.UserID{uid}); on[uid] {
			t.Fatalf("user %d reads online with no session (presence %q)", uid, bus.named(uid))
		}
	})
	t.Run("remote kick", func(t *testing.T) {
		bus := newHeldBus()
		n := newLoginNode(t, bus)
		live, _ := raceLogins(t, n, bus)
		// What another node's login kicks is the session presence names.
		busHandler{n}.Kick(uid, bus.named(uid))
		if u, _ := live.User(); u != 0 {
			t.Fatalf("the live session survived the kick of the session presence names: user %d has two sessions", uid)
		}
	})
}

// A connection that closes while its LOGIN writes presence leaves no
// presence behind.
func TestCloseDuringLogin(t *testing.T) {
	const uid = codec.UserID(5)
	bus := newHeldBus()
	n := newLoginNode(t, bus)
	a, aDone := loginLater(n)
	<-bus.entered
	closed := make(chan struct{})
	go func() { n.Closed(a); close(closed) }()
	time.Sleep(20 * time.Millisecond) // give Closed the chance to run first
	close(bus.release)
	<-aDone
	<-closed
	if on, _ := bus.Online(context.Background(), []codec.UserID{uid}); on[uid] {
		t.Fatalf("user %d reads online after its only connection closed during login (presence %q)", uid, bus.named(uid))
	}
	if n.hub.get(uid) != nil {
		t.Fatal("the closed session is still in the hub")
	}
}

func TestLockUser(t *testing.T) {
	h := newHub()
	unlock := h.lockUser(7)
	other := h.lockUser(8) // another user is not held up
	other()
	got := make(chan struct{})
	go func() { h.lockUser(7)(); close(got) }()
	select {
	case <-got:
		t.Fatal("a second lockUser of the same user did not wait")
	case <-time.After(20 * time.Millisecond):
	}
	unlock()
	<-got
	for i := range h.shards {
		if len(h.shards[i].locks) != 0 {
			t.Fatalf("shard %d keeps %d user locks after every unlock", i, len(h.shards[i].locks))
		}
	}
}

func (l *loginStore) BumpTokenVersion(context.Context, codec.UserID) error { return nil }

// Each login on a connection is a new session id in presence, so whatever
// is still pending for an earlier login there (a presence delete that the
// bus retries, a kick from another node) cannot touch the later one.
func TestReloginIsNewSessionID(t *testing.T) {
	const uid = codec.UserID(5)
	bus := newHeldBus()
	close(bus.release)
	n := newLoginNode(t, bus)
	s := n.Open(&countFrames{})
	login := []byte(`{"msgid":1,"id":5,"password":"secret1"}`)
	n.Handle(s, login)
	first := bus.named(uid)
	if first == "" {
		t.Fatal("the first login wrote no presence")
	}
	n.Handle(s, []byte(`{"msgid":3,"id":5}`)) // LOGINOUT
	if got := bus.named(uid); got != "" {
		t.Fatalf("presence %q after logout", got)
	}
	n.Handle(s, login)
	second := bus.named(uid)
	if second == "" || second == first {
		t.Fatalf("the second login's session id %q, the first's %q: want a new one", second, first)
	}
	// A kick meant for the first login does not end the second.
	busHandler{n}.Kick(uid, first)
	if u, _ := s.User(); u != uid {
		t.Fatal("a kick of the connection's earlier login ended its current one")
	}
	busHandler{n}.Kick(uid, second)
	if u, _ := s.User(); u != 0 {
		t.Fatal("a kick of the current login did not end it")
	}
}

// groupsStore is a loginStore whose user 1 has friends 2 and 3 and is in
// group 10 (members 1, 2, 4: listed) and group 11 (5000 members: not
// listed); it records the groups whose members are read.
type groupsStore struct {
	*loginStore
	mu   sync.Mutex
	read [][]codec.GroupID
}

func (g *groupsStore) Friends(context.Context, codec.UserID) ([]Member, error) {
	return []Member{{ID: 2, Name: "b"}, {ID: 3, Name: "c"}}, nil
}

func (g *groupsStore) UserGroups(context.Context, codec.UserID) ([]Group, error) {
	return []Group{{ID: 10, Name: "small", Size: 3}, {ID: 11, Name: "big", Size: 5000}}, nil
}

func (g *groupsStore) GroupMembersOf(_ context.Context, gids []codec.GroupID) (map[codec.GroupID][]Member, error) {
	g.mu.Lock()
	g.read = append(g.read, gids)
	g.mu.Unlock()
	out := map[codec.GroupID][]Member{}
	for _, gid := range gids {
		if gid == 10 {
			out[gid] = []Member{{ID: 1, Role: codec.RoleCreator}, {ID: 2, Role: codec.RoleNormal}, {ID: 4, Role: codec.RoleNormal}}
		}
	}
	return out, nil
}

// onlineBus records the ids of each presence lookup.
type onlineBus struct {
	*pubsub.Memory
	mu      sync.Mutex
	lookups [][]codec.UserID
}

func (b *onlineBus) Online(ctx context.Context, ids []codec.UserID) (map[codec.UserID]bool, error) {
	b.mu.Lock()
	b.lookups = append(b.lookups, slices.Clone(ids))
	b.mu.Unlock()
	return b.Memory.Online(ctx, ids)
}

// frames is a Transport that keeps what it is sent.
type frames struct {
	mu  sync.Mutex
	got [][]byte
}

func (f *frames) Send(b []byte)                           { f.mu.Lock(); f.got = append(f.got, b); f.mu.Unlock() }
func (f *frames) Close()                                  {}
func (f *frames) WaitOutbound(context.Context, int) error { return nil }
func (f *frames) Unsent() int                             { return 0 }

// A login reads the members of the groups it lists only, and asks
// presence once for each friend and listed member (not the user, nor the
// members of a group it does not list).
func TestLoginReadsListedMembersOnly(t *testing.T) {
	st := &groupsStore{loginStore: newLoginStore(t)}
	bus := &onlineBus{Memory: pubsub.NewMemory()}
	n, err := New(context.Background(), Config{Store: st, Bus: bus, BcryptCost: bcrypt.MinCost})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	out := &frames{}
	s := n.Open(out)
	n.Handle(s, []byte(`{"msgid":1,"id":1,"password":"secret1"}`))
	if len(out.got) != 1 {
		t.Fatalf("%d frames, want the LOGIN_ACK", len(out.got))
	}
	var ack codec.LoginAck
	if err := json.Unmarshal(out.got[0][codec.HeaderLen:], &ack); err != nil || ack.Errno != codec.OK {
		t.Fatalf("LOGIN_ACK %s: %v", out.got[0], err)
	}
	if len(ack.Groups) != 2 || ack.Groups[0].Size != 3 || len(ack.Groups[0].Users) != 3 || ack.Groups[1].Size != 5000 || len(ack.Groups[1].Users) != 0 {
		t.Fatalf("groups %+v", ack.Groups)
	}
	if len(st.read) != 1 || !slices.Equal(st.read[0], []codec.GroupID{10}) {
		t.Fatalf("member lists read %v, want only group 10's", st.read)
	}
	if len(bus.lookups) != 1 || !slices.Equal(bus.lookups[0], []codec.UserID{2, 3, 4}) {
		t.Fatalf("presence lookups %v, want one of 2, 3, 4", bus.lookups)
	}
}

// noUsers is a fakeStore without users.
type noUsers struct{ *fakeStore }

func (noUsers) User(context.Context, codec.UserID) (User, error) { return User{}, ErrNotFound }

// A password login for an id that does not exist is checked against a
// hash all the same, so that its answer takes as long as a wrong
// password's and does not tell which ids exist; a token login checks none.
func TestLoginOfMissingIDChecksAHash(t *testing.T) {
	n := newNode(t, noUsers{newFakeStore()})
	hash, err := bcrypt.GenerateFromPassword([]byte("x"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	n.noUserHash = func() []byte { checked++; return hash }
	f := &frames{}
	s := n.Open(f)
	for i, req := range []string{
		`{"msgid":1,"reqid":1,"id":99,"password":"secret1"}`,
		`{"msgid":1,"reqid":2,"id":99,"token":"abc"}`,
	} {
		n.Handle(s, []byte(req))
		f.mu.Lock()
		got := string(f.got[i])
		f.mu.Unlock()
		if want := `"errno":1,`; !strings.Contains(got, want) {
			t.Fatalf("answer %s, want errno 1", got)
		}
		if checked != 1 {
			t.Fatalf("after %s the hash was checked %d times, want once in all", req, checked)
		}
	}
}

// bcrypt runs at most PasswordWorkers at once: a password login or a
// signup that waits for one past its deadline gets errno 10; a token login
// does not wait.
func TestPasswordWorkIsBounded(t *testing.T) {
	n, err := New(context.Background(), Config{Store: newLoginStore(t), Bus: pubsub.NewMemory(),
		BcryptCost: bcrypt.MinCost, PasswordWorkers: 1, RequestTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	answer := func(req string) string {
		f := &frames{}
		n.Handle(n.Open(f), []byte(req))
		f.mu.Lock()
		defer f.mu.Unlock()
		if len(f.got) == 0 {
			t.Fatalf("%s: no answer", req)
		}
		return string(f.got[0])
	}
	n.hashing <- struct{}{} // the one password worker is busy
	for _, req := range []string{
		`{"msgid":1,"id":5,"password":"secret1"}`,
		`{"msgid":4,"name":"newbie","password":"secret1"}`,
	} {
		if got := answer(req); !strings.Contains(got, `"errno":10`) {
			t.Errorf("%s while bcrypt is busy: %s, want errno 10", req, got)
		}
	}
	token := n.tokens.issue(5, 0, n.cfg.Now())
	if got := answer(`{"msgid":1,"id":5,"token":"` + token + `"}`); !strings.Contains(got, `"errmsg":"ok"`) {
		t.Errorf("token login while bcrypt is busy: %s, want ok", got)
	}
	<-n.hashing
	if got := answer(`{"msgid":1,"id":6,"password":"secret1"}`); !strings.Contains(got, `"errmsg":"ok"`) {
		t.Errorf("password login once bcrypt is free: %s, want ok", got)
	}
}

// A password login for an id that does not exist waits for password work
// like any other (its check is a hash too).
func TestPasswordWorkBoundsMissingIDs(t *testing.T) {
	n, err := New(context.Background(), Config{Store: noUsers{newFakeStore()}, Bus: pubsub.NewMemory(),
		BcryptCost: bcrypt.MinCost, PasswordWorkers: 1, RequestTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	n.hashing <- struct{}{}
	f := &frames{}
	n.Handle(n.Open(f), []byte(`{"msgid":1,"id":99,"password":"secret1"}`))
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.got) != 1 || !strings.Contains(string(f.got[0]), `"errno":10`) {
		t.Errorf("missing id while bcrypt is busy: %q, want errno 10", f.got)
	}
}
