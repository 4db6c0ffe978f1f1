package service

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatcluster/chatcluster/codec"
)

// queueStore is a fakeStore whose commit queue HandleNow fills; it counts
// the user reads HandleNow must never make.
type queueStore struct {
	*fakeStore
	mu     sync.Mutex
	full   bool
	queued []SendRequest
	reads  int
}

func (q *queueStore) TrySendAsync(req SendRequest, _ func(SendResult, error)) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.full {
		return false
	}
	q.queued = append(q.queued, req)
	return true
}

func (q *queueStore) User(_ context.Context, id codec.UserID) (User, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.reads++
	return User{ID: id, Name: "someone"}, nil
}

// countFrames is a Transport that counts what it is sent.
type countFrames struct {
	mu sync.Mutex
	n  int
}

func (c *countFrames) Send([]byte)                             { c.mu.Lock(); c.n++; c.mu.Unlock() }
func (c *countFrames) Close()                                  {}
func (c *countFrames) WaitOutbound(context.Context, int) error { return nil }
func (c *countFrames) Unsent() int                             { return 0 }

// TestHandleNow: the event loop's fast path handles a chat message whose
// recipient is known without a store read, and a valid DELIVERED, and
// leaves everything else to Handle untouched: no store read, no send
// counted, nothing written.
func TestHandleNow(t *testing.T) {
	const alice, bob, carol, gid = codec.UserID(1), codec.UserID(2), codec.UserID(3), codec.GroupID(7)
	st := &queueStore{fakeStore: newFakeStore()}
	n, _, _ := loggedIn(t, st, alice, nil)
	out := &countFrames{}
	s := n.Open(out)
	s.mu.Lock()
	s.uid, s.name = alice, "alice"
	s.inbox.sent = 5
	s.mu.Unlock()
	n.members.put(gid, []codec.UserID{alice, bob})
	n.members.put(gid+1, []codec.UserID{bob, carol})

	// The frames' msgids: 1 LOGIN, 6 ONE_CHAT, 10 GROUP_CHAT, 12 DELIVERED,
	// 13 PING.
	for _, c := range []struct {
		name, frame string
		want        bool
	}{
		{"login", `{"msgid":1,"id":1,"password":"x"}`, false},
		{"ping", `{"msgid":13}`, false},
		{"malformed", `{"msgid":6,`, false},
		{"recipient not cached", `{"msgid":6,"toid":2,"msg":"hi","clientmsgid":"c1"}`, false},
		{"blank message", `{"msgid":6,"toid":1,"msg":" ","clientmsgid":"c2"}`, false},
		{"DELIVERED without seq", `{"msgid":12}`, false},
		{"group whose cached members lack the sender", `{"msgid":10,"groupid":8,"msg":"hi","clientmsgid":"c3"}`, false},
		{"to an online user", `{"msgid":6,"toid":1,"msg":"hi","clientmsgid":"c4"}`, true},
		{"to a group", `{"msgid":10,"groupid":7,"msg":"hi","clientmsgid":"c5"}`, true},
		{"DELIVERED", `{"msgid":12,"seq":3}`, true},
	} {
		if got := n.HandleNow(s, []byte(c.frame)); got != c.want {
			t.Errorf("%s: HandleNow = %v, want %v", c.name, got, c.want)
		}
	}
	if anon := n.Open(out); n.HandleNow(anon, []byte(`{"msgid":6,"toid":1,"msg":"hi","clientmsgid":"c7"}`)) {
		t.Error("chat from a session not logged in: handled, want it left to Handle")
	}
	if st.reads != 0 {
		t.Errorf("%d store reads; HandleNow must make none", st.reads)
	}
	if out.n != 0 {
		t.Errorf("%d frames written; HandleNow answers nothing itself", out.n)
	}
	if len(st.queued) != 2 || st.queued[0].ToUser != alice || st.queued[1].Group != gid || !n.Busy() {
		t.Errorf("queued %+v (busy %v), want the chat to alice and the group message", st.queued, n.Busy())
	}
	if got := n.pendingAck(AckKey{User: alice}); got != 3 {
		t.Errorf("pending acknowledgement %d, want 3", got)
	}

	// A full commit queue: nothing queued, nothing counted.
	st2 := &queueStore{fakeStore: newFakeStore(), full: true}
	n2, s2, _ := loggedIn(t, st2, alice, nil)
	if n2.HandleNow(s2, []byte(`{"msgid":6,"toid":1,"msg":"hi","clientmsgid":"c6"}`)) || n2.Busy() || len(st2.queued) != 0 ||
		s2.sendingHeld.Load() != 0 {
		t.Errorf("full queue: handled, busy %v, queued %d, held %d; want it left to Handle", n2.Busy(), len(st2.queued), s2.sendingHeld.Load())
	}
}

// heldStore is a fakeStore whose sends wait for their commit until the
// test completes them.
type heldStore struct {
	*fakeStore
	mu   sync.Mutex
	sent []SendRequest
	done []func(SendResult, error)
}

func (h *heldStore) TrySendAsync(req SendRequest, done func(SendResult, error)) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.sent, h.done = append(h.sent, req), append(h.done, done)
	return true
}

func (h *heldStore) SendAsync(_ context.Context, req SendRequest, done func(SendResult, error)) {
	h.TrySendAsync(req, done)
}

// queued returns how many sends were queued.
func (h *heldStore) queued() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.sent)
}

// commit completes every send queued so far.
func (h *heldStore) commit() {
	h.mu.Lock()
	done := h.done
	h.done = nil
	h.mu.Unlock()
	for _, d := range done {
		d(SendResult{}, nil)
	}
}

// What a connection's sends waiting for their commit hold (each one's
// text and SendRecipientCost a recipient) stays within MaxSending, or is
// one send: past that, the event loop leaves a send to Handle, which
// queues it once the earlier ones are stored.
func TestSendsWaitingAreBounded(t *testing.T) {
	const alice, gid = codec.UserID(1), codec.GroupID(7)
	st := &heldStore{fakeStore: newFakeStore()}
	n, _, _ := loggedIn(t, st, alice, nil)
	s := n.Open(&countFrames{})
	s.mu.Lock()
	s.uid, s.name = alice, "alice"
	s.mu.Unlock()
	n.members.put(gid, []codec.UserID{alice, 2, 3, 4, 5, 6, 7}) // 6 recipients
	group := []byte(`{"msgid":10,"groupid":7,"msg":"hi"}`)      // holds 6*128+2 = 770
	one := func(text string) []byte { return []byte(`{"msgid":6,"toid":1,"msg":"` + text + `"}`) }
	n.cfg.MaxSending = 1000
	if !n.HandleNow(s, group) {
		t.Fatal("the first group send was not queued")
	}
	if n.HandleNow(s, group) {
		t.Fatal("a second group send was queued: 1540 held, more than 1000")
	}
	if !n.HandleNow(s, one("to myself")) { // 128+9
		t.Fatal("a one-to-one send was not queued: 907 held, within 1000")
	}
	handled := make(chan struct{})
	go func() { n.Handle(s, group); close(handled) }()
	time.Sleep(50 * time.Millisecond)
	if got := st.queued(); got != 2 {
		t.Fatalf("%d sends queued while 907 is held, want 2: the third must wait", got)
	}
	st.commit()
	<-handled
	if got := st.queued(); got != 3 {
		t.Fatalf("%d sends queued after the commit, want 3", got)
	}
	st.commit()
	if held := s.sendingHeld.Load(); held != 0 {
		t.Fatalf("%d held after every send's commit, want 0", held)
	}
	// A message's text counts: with nothing waiting a send of any size
	// goes, and then a short one does not fit beside it.
	if !n.HandleNow(s, one(strings.Repeat("x", 900))) {
		t.Fatal("a send holding 1028 with nothing waiting was not queued")
	}
	if n.HandleNow(s, one("x")) {
		t.Fatal("a send was queued beside one holding 1028")
	}
}
