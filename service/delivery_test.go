package service

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/pubsub"
)

// fakeStore is an in-memory inbox; only the methods delivery uses.
type fakeStore struct {
	Store // unimplemented methods panic
	mu    sync.Mutex
	inbox map[codec.UserID][]codec.Delivery
	log   map[codec.GroupID][]codec.Delivery
	acks  []map[AckKey]codec.Seq
	// members of each group, for GroupSizes and GroupMembers
	members map[codec.GroupID][]codec.UserID
}

func (f *fakeStore) GroupSizes(_ context.Context, gids []codec.GroupID) (map[codec.GroupID]int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[codec.GroupID]int{}
	for _, gid := range gids {
		if n := len(f.members[gid]); n > 0 {
			out[gid] = n
		}
	}
	return out, nil
}

func (f *fakeStore) GroupMembers(_ context.Context, gid codec.GroupID) ([]Member, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Member
	for _, id := range f.members[gid] {
		out = append(out, Member{ID: id})
	}
	return out, nil
}

func newFakeStore() *fakeStore {
	return &fakeStore{inbox: map[codec.UserID][]codec.Delivery{}, log: map[codec.GroupID][]codec.Delivery{},
		members: map[codec.GroupID][]codec.UserID{}}
}

func (f *fakeStore) Secret(context.Context) ([]byte, error) { return []byte("k"), nil }
func (f *fakeStore) SetCommitHook(func([]Entry))            {}
func (f *fakeStore) Ack(_ context.Context, acks map[AckKey]codec.Seq) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.acks = append(f.acks, acks)
	return nil
}

func (f *fakeStore) GroupLog(_ context.Context, gid codec.GroupID, after codec.Seq, limit int) ([]codec.Delivery, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return page(f.log[gid], func(d codec.Delivery) codec.Seq { return d.GSeq }, after, limit), nil
}

// page returns up to limit entries of list whose position is after after.
func page(list []codec.Delivery, pos func(codec.Delivery) codec.Seq, after codec.Seq, limit int) []codec.Delivery {
	var out []codec.Delivery
	for _, d := range list {
		if pos(d) > after && len(out) < limit {
			out = append(out, d)
		}
	}
	return out
}

// addGroup appends a message from user from to group gid's log.
func (f *fakeStore) addGroup(gid codec.GroupID, from codec.UserID) codec.Delivery {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := codec.Delivery{MsgID: codec.MsgGroupChat, ID: from, Name: "x", GroupID: gid, Msg: "m", GSeq: codec.Seq(len(f.log[gid]) + 1)}
	f.log[gid] = append(f.log[gid], d)
	return d
}

func (f *fakeStore) Inbox(_ context.Context, uid codec.UserID, after codec.Seq, limit int) ([]codec.Delivery, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return page(f.inbox[uid], func(d codec.Delivery) codec.Seq { return d.Seq }, after, limit), nil
}

func (f *fakeStore) add(uid codec.UserID, seq codec.Seq) codec.Delivery {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := codec.Delivery{MsgID: codec.MsgOneChat, ID: 9, Name: "x", ToID: uid, Msg: "m", Seq: seq}
	f.inbox[uid] = append(f.inbox[uid], d)
	return d
}

// loggedIn starts a Node on st and opens a session logged in as uid, in
// the hub, writing to the returned recorder; setup (if any) runs on the
// session with its lock held.
func loggedIn(t *testing.T, st Store, uid codec.UserID, setup func(s *Session)) (*Node, *Session, *recorder) {
	t.Helper()
	n, err := New(context.Background(), Config{Store: st, Bus: pubsub.NewMemory()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	rec := &recorder{}
	s := n.Open(rec)
	s.mu.Lock()
	s.uid, s.name = uid, "u"
	if setup != nil {
		setup(s)
	}
	s.mu.Unlock()
	n.hub.swap(uid, s)
	return n, s, rec
}

// recorder is a Transport that decodes what is written: the seq of each
// inbox delivery, and 1000*groupid + gseq of each group delivery.
type recorder struct {
	mu   sync.Mutex
	seqs []codec.Seq
}

// requests decodes every frame in buf (one Send may carry several).
func requests(buf []byte) ([]*codec.Request, error) {
	var out []*codec.Request
	for len(buf) > 0 {
		body, n, err := codec.Decode(buf, 1<<20)
		if err != nil {
			return out, err
		}
		req, err := codec.ParseRequest(body)
		if err != nil {
			return out, fmt.Errorf("frame %q: %w", body, err)
		}
		out = append(out, req)
		buf = buf[n:]
	}
	return out, nil
}

// Send decodes every frame in buf.
func (r *recorder) Send(buf []byte) {
	reqs, err := requests(buf)
	if err != nil {
		panic(err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, req := range reqs {
		if req.GSeq != nil {
			r.seqs = append(r.seqs, codec.Seq(1000**req.GroupID+*req.GSeq))
		} else {
			r.seqs = append(r.seqs, codec.Seq(*req.Seq))
		}
	}
}
func (r *recorder) Close()                                  {}
func (r *recorder) WaitOutbound(context.Context, int) error { return nil }
func (r *recorder) Unsent() int                             { return 0 }

func (r *recorder) got() []codec.Seq {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]codec.Seq(nil), r.seqs...)
}

// TestDeliveryOrderWithLateNotices: notices that arrive out of order, twice,
// or never (as across nodes) still yield every entry once, in seq order,
// because a gap makes the session read the inbox.
func TestDeliveryOrderWithLateNotices(t *testing.T) {
	st := newFakeStore()
	const uid = codec.UserID(7)
	n, _, rec := loggedIn(t, st, uid, nil)

	d1, d2, d3 := st.add(uid, 1), st.add(uid, 2), st.add(uid, 3)
	n.deliver([]pubsub.Notice{{To: uid, Deliveries: []codec.Delivery{d1}}}) // in order
	n.deliver([]pubsub.Notice{{To: uid, Deliveries: []codec.Delivery{d3}}}) // 2 is late: gap
	n.deliver([]pubsub.Notice{{To: uid, Deliveries: []codec.Delivery{d2}}}) // late one arrives
	n.deliver([]pubsub.Notice{{To: uid, Deliveries: []codec.Delivery{d1}}}) // a duplicate
	d4 := st.add(uid, 4)                                                    // its notice is lost
	d5 := st.add(uid, 5)
	n.deliver([]pubsub.Notice{{To: uid, Deliveries: []codec.Delivery{d5}}})
	_ = d4
	deadline := time.Now().Add(5 * time.Second)
	for len(rec.got()) < 5 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // nothing more may follow
	got := rec.got()
	if len(got) != 5 {
		t.Fatalf("written %v, want 1..5", got)
	}
	for i, seq := range got {
		if seq != codec.Seq(i+1) {
			t.Fatalf("written %v, want 1..5 in order", got)
		}
	}
}

// A resync that comes while a login reads the inbox (and so cannot start a
// pump) is not lost: the login pumps once more, and what the resync was for
// is written. Without the resync, a complete login needs no pump.
func TestResyncDuringLoginRead(t *testing.T) {
	st := newFakeStore()
	const uid = codec.UserID(8)
	n, s, rec := loggedIn(t, st, uid, func(s *Session) {
		s.inbox.pumping = true // a login is reading the (empty) inbox
	})
	gen := s.gen

	s.mu.Lock()
	if s.needsPumpLocked(true) {
		t.Fatal("a complete login with nothing new wants a pump")
	}
	s.inbox.pumping = true // the same login again, now with a resync in its window
	s.mu.Unlock()
	n.resync(s)    // refused: the login is reading
	st.add(uid, 1) // committed after the login's read; its notice was lost
	s.mu.Lock()
	pump := s.needsPumpLocked(true)
	s.mu.Unlock()
	if !pump {
		t.Fatal("a resync during the login's read was dropped")
	}
	runPump(t, n, s, gen, 0)
	if got := rec.got(); len(got) != 1 || got[0] != 1 {
		t.Fatalf("written %v, want [1]", got)
	}
}

// runPump queues streams keys for s's pump of generation gen and runs
// the pump here, to its end.
func runPump(t *testing.T, n *Node, s *Session, gen uint32, keys ...codec.GroupID) {
	t.Helper()
	s.mu.Lock()
	start := s.queuePumpsLocked(gen, keys...)
	s.mu.Unlock()
	if !start {
		t.Fatalf("no pump to start for streams %v", keys)
	}
	n.pump(s, gen)
}

// waitWritten polls until rec holds n frames (or 5 s passed), then makes
// sure nothing more follows.
func waitWritten(t *testing.T, rec *recorder, n int) []codec.Seq {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(rec.got()) < n && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	return rec.got()
}

func equalSeqs(a, b []codec.Seq) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// A group's log is one stream per member, numbered by gseq: the member's own
// messages are passed over (not written, no gap), a late or lost notice
// makes the session read the group log, and the inbox stream beside it is
// not disturbed.
func TestGroupStreamDelivery(t *testing.T) {
	st := newFakeStore()
	const uid, gid = codec.UserID(7), codec.GroupID(3)
	n, s, rec := loggedIn(t, st, uid, func(s *Session) { s.setGroupLocked(gid, 0, 0) })
	note := func(ds ...codec.Delivery) { n.deliver([]pubsub.Notice{{To: uid, Deliveries: ds}}) }

	g1, own2 := st.addGroup(gid, 9), st.addGroup(gid, uid)
	note(g1, own2)                 // 3001, then the user's own message: passed over
	g3 := st.addGroup(gid, 9)      // its notice is lost
	g4 := st.addGroup(gid, 9)      //
	note(st.add(uid, 1), g4)       // inbox seq 1; gseq 4 is a gap: the log is read
	_ = g3                         //
	note(st.add(uid, 2), g4, own2) // duplicates are dropped
	got := waitWritten(t, rec, 5)
	want := []codec.Seq{3001, 1, 3003, 3004, 2}
	if !equalSeqs(got, want) && !equalSeqs(got, []codec.Seq{3001, 1, 2, 3003, 3004}) {
		t.Fatalf("written %v, want %v (group entries after the gap may follow the second inbox entry)", got, want)
	}

	// DELIVERED is clamped per stream to what this session was sent.
	seq, gseq, g := int64(99), int64(99), int64(gid)
	if rerr := n.delivered(s, &codec.Request{MsgID: codec.MsgDelivered, Seq: &seq, GroupID: &g, GSeq: &gseq}, uid); rerr != nil {
		t.Fatal(rerr)
	}
	n.flushAcks()
	st.mu.Lock()
	acks := st.acks
	st.mu.Unlock()
	if len(acks) != 1 || acks[0][AckKey{User: uid}] != 2 || acks[0][AckKey{User: uid, Group: gid}] != 4 {
		t.Fatalf("acks %v, want inbox 2 and group %d at 4", acks, gid)
	}
	if rerr := n.delivered(s, &codec.Request{MsgID: codec.MsgDelivered, GSeq: &gseq}, uid); rerr == nil || rerr.errno != codec.ErrnoBadRequest {
		t.Fatalf("gseq without groupid: %v, want errno %d", rerr, codec.ErrnoBadRequest)
	}
}

// A group delivery that reaches a session while its login has not read the
// user's groups yet is held back, and written once the login set the
// member's position; a delivery for a group the user is not in is dropped
// after the login.
func TestGroupDeliveryDuringLogin(t *testing.T) {
	st := newFakeStore()
	const uid, gid = codec.UserID(7), codec.GroupID(4)
	n, s, rec := loggedIn(t, st, uid, func(s *Session) { s.inbox.pumping, s.loggingIn = true, true })
	gen := s.gen

	g1, g2 := st.addGroup(gid, 9), st.addGroup(gid, 9)
	n.deliver([]pubsub.Notice{{To: uid, Deliveries: []codec.Delivery{g2}}}) // committed after the login read the groups
	if got := rec.got(); len(got) != 0 {
		t.Fatalf("written %v before the login finished", got)
	}
	_ = g1
	s.mu.Lock()
	s.loggingIn = false
	pump := s.setGroupLocked(gid, 0, 1) // the login read: acked 0, last 1
	s.inbox.pumping = false
	s.mu.Unlock()
	if !pump {
		t.Fatal("a held-back group with a backlog needs no pump")
	}
	runPump(t, n, s, gen, gid)
	if got := rec.got(); !equalSeqs(got, []codec.Seq{4001, 4002}) {
		t.Fatalf("written %v, want [4001 4002]", got)
	}
	n.deliver([]pubsub.Notice{{To: uid, Deliveries: []codec.Delivery{st.addGroup(5, 9)}}})
	if got := waitWritten(t, rec, 2); len(got) != 2 {
		t.Fatalf("written %v: a group the session does not follow was delivered", got)
	}
}

// A member who joined while a message to the group was on its way to the
// commit (its recipients were read before the join, it was stored after)
// is notified all the same: the commit hook finds the group bigger than
// the message's entries and reads the members again.
func TestLateMemberOfGroupSend(t *testing.T) {
	st := newFakeStore()
	const alice, bob, carol, gid = codec.UserID(1), codec.UserID(2), codec.UserID(3), codec.GroupID(1)
	// carol's session, following the group from the start she will join at.
	n, _, rec := loggedIn(t, st, carol, func(s *Session) { s.setGroupLocked(gid, 0, 0) })
	st.members[gid] = []codec.UserID{alice, bob}
	// alice sends: the recipients are read now (bob only).
	sr, rerr := n.groupChat(context.Background(), &codec.Request{MsgID: codec.MsgGroupChat, GroupID: ptr(int64(gid)), Msg: ptr("hi")}, alice, "alice", false)
	if rerr != nil || len(sr.To) != 1 || sr.To[0] != bob {
		t.Fatalf("recipients %v, %v; want [bob]", sr.To, rerr)
	}
	// carol joins at start 0 before the message is committed.
	st.mu.Lock()
	st.members[gid] = append(st.members[gid], carol)
	st.mu.Unlock()
	// The commit: gseq 1, entries for the recipients read before and the sender.
	d := st.addGroup(gid, alice)
	n.committed([]Entry{{To: bob, Delivery: d}, {To: alice, Delivery: d}})
	if got := waitWritten(t, rec, 1); !equalSeqs(got, []codec.Seq{1001}) {
		t.Fatalf("carol got %v, want [1001]", got)
	}
}

func ptr[T any](v T) *T { return &v }

// joinStore is a fakeStore whose JoinGroup reports the user already a
// member (a retried ADD_GROUP whose first answer was lost).
type joinStore struct {
	*fakeStore
	groups []Group
}

func (j *joinStore) JoinGroup(context.Context, codec.GroupID, codec.UserID, int, int) (codec.Seq, error) {
	return 0, ErrConflict
}

func (j *joinStore) UserGroups(context.Context, codec.UserID) ([]Group, error) { return j.groups, nil }

// A join retried after its answer was lost gets errno 7, and the session
// follows the group from the member's stored position all the same.
func TestRetriedJoinFollowsGroup(t *testing.T) {
	st := &joinStore{fakeStore: newFakeStore()}
	const carol, gid = codec.UserID(3), codec.GroupID(2)
	n, s, rec := loggedIn(t, st, carol, nil)
	st.addGroup(gid, 1)
	st.addGroup(gid, 1)
	st.groups = []Group{{ID: gid, Last: 2, Acked: 1}} // joined at 0, acknowledged 1 on the lost connection
	rerr := n.addGroup(context.Background(), s, &codec.Request{MsgID: codec.MsgAddGroup, GroupID: ptr(int64(gid))}, carol)
	if rerr == nil || rerr.errno != codec.ErrnoConflict {
		t.Fatalf("retried join: %v, want errno %d", rerr, codec.ErrnoConflict)
	}
	if got := waitWritten(t, rec, 1); !equalSeqs(got, []codec.Seq{2002}) { // written by a pump of its own
		t.Fatalf("written %v, want [2002] (the backlog after the stored position)", got)
	}
	n.deliver([]pubsub.Notice{{To: carol, Deliveries: []codec.Delivery{st.addGroup(gid, 1)}}})
	if got := waitWritten(t, rec, 2); !equalSeqs(got, []codec.Seq{2002, 2003}) {
		t.Fatalf("written %v, want [2002 2003]: the session follows the group", got)
	}
}

// A commit's notices share one array for each recipient's first delivery:
// a second delivery to the same recipient must not overwrite the next
// recipient's.
func TestCommittedNoticesKeepApart(t *testing.T) {
	st := newFakeStore()
	const alice, bob = codec.UserID(1), codec.UserID(2)
	n, _, recA := loggedIn(t, st, alice, nil)
	recB := &recorder{}
	s := n.Open(recB)
	s.mu.Lock()
	s.uid, s.name = bob, "b"
	s.mu.Unlock()
	n.hub.swap(bob, s)

	// bob's entry is not in the fake's inbox, so that a read of it (after
	// a wrong delivery made a gap) cannot make up for a lost one.
	a1, a2 := st.add(alice, 1), st.add(alice, 2)
	b1 := codec.Delivery{MsgID: codec.MsgOneChat, ID: alice, Name: "a", ToID: bob, Msg: "m", Seq: 1}
	n.committed([]Entry{{To: alice, Delivery: a1}, {To: bob, Delivery: b1}, {To: alice, Delivery: a2}})
	if got := waitWritten(t, recA, 2); !equalSeqs(got, []codec.Seq{1, 2}) {
		t.Fatalf("alice was written %v, want [1 2]", got)
	}
	if got := waitWritten(t, recB, 1); !equalSeqs(got, []codec.Seq{1}) {
		t.Fatalf("bob was written %v, want [1]", got)
	}
}

// keeper is a Transport that keeps every buffer it is sent, as the server's
// connection does until its flush, and decodes them only when asked.
type keeper struct {
	mu   sync.Mutex
	bufs [][]byte
}

func (k *keeper) Send(buf []byte)                         { k.mu.Lock(); k.bufs = append(k.bufs, buf); k.mu.Unlock() }
func (k *keeper) Close()                                  {}
func (k *keeper) WaitOutbound(context.Context, int) error { return nil }
func (k *keeper) Unsent() int                             { return 0 }

// msgs decodes the kept buffers: each frame's msg, in order.
func (k *keeper) msgs(t *testing.T) []string {
	t.Helper()
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []string
	for _, buf := range k.bufs {
		reqs, err := requests(buf)
		if err != nil {
			t.Fatal(err)
		}
		for _, req := range reqs {
			if req.Msg == nil {
				t.Fatalf("a frame without msg: %+v", req)
			}
			out = append(out, *req.Msg)
		}
	}
	return out
}

// A group message's one encoded frame is shared by its members' buffers: a
// member's private message written after it in the same buffer must not
// land in the frame's spare room, where the next member's would overwrite
// it while the first buffer still waits to be written.
func TestSharedGroupFrameKeepsPrivateMessagesApart(t *testing.T) {
	st := newFakeStore()
	const gid = codec.GroupID(5)
	n := newNode(t, st)
	keepers := map[codec.UserID]*keeper{}
	for uid := codec.UserID(1); uid <= 3; uid++ {
		keepers[uid] = &keeper{}
		addMember(n, st, gid, uid, keepers[uid])
	}
	// One commit: user 1's group message, then a private message to each
	// of the other members.
	g := codec.Delivery{MsgID: codec.MsgGroupChat, ID: 1, Name: "u", GroupID: gid, Msg: "to all", GSeq: 1}
	private := func(to codec.UserID) codec.Delivery {
		return codec.Delivery{MsgID: codec.MsgOneChat, ID: 1, Name: "u", ToID: to, Msg: fmt.Sprintf("only for %d", to), Seq: 1}
	}
	n.committed([]Entry{{To: 2, Delivery: g}, {To: 3, Delivery: g}, {To: 1, Delivery: g},
		{To: 2, Delivery: private(2)}, {To: 3, Delivery: private(3)}})
	for uid, want := range map[codec.UserID][]string{1: nil, 2: {"to all", "only for 2"}, 3: {"to all", "only for 3"}} {
		if got := keepers[uid].msgs(t); !slices.Equal(got, want) {
			t.Errorf("user %d was written %q, want %q", uid, got, want)
		}
	}
}

// gate is a recorder whose client is behind: Unsent reports unsent bytes,
// and WaitOutbound blocks until open is closed. It counts the goroutines
// waiting in WaitOutbound at once.
type gate struct {
	recorder
	unsent  atomic.Int64
	open    chan struct{}
	waiting atomic.Int32
	most    atomic.Int32
}

func (g *gate) Unsent() int { return int(g.unsent.Load()) }
func (g *gate) WaitOutbound(ctx context.Context, _ int) error {
	w := g.waiting.Add(1)
	defer g.waiting.Add(-1)
	for m := g.most.Load(); w > m && !g.most.CompareAndSwap(m, w); m = g.most.Load() {
	}
	select {
	case <-g.open:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// behindSession is loggedIn with a gate (unsent: 1 MiB, the default
// PumpWindow) for its transport.
func behindSession(t *testing.T, st Store, uid codec.UserID, setup func(s *Session)) (*Node, *Session, *gate) {
	t.Helper()
	n, s, _ := loggedIn(t, st, uid, setup)
	g := &gate{open: make(chan struct{})}
	g.unsent.Store(1 << 20)
	s.mu.Lock()
	s.t = g
	s.mu.Unlock()
	return n, s, g
}

// TestOnePumpPerSession: a resync of a session in 100 groups whose client
// is behind waits for it with one pump, not one per group; once the
// client takes its output, every stream is read, each entry written once.
func TestOnePumpPerSession(t *testing.T) {
	st := newFakeStore()
	const uid, groups = codec.UserID(7), 100
	n, s, g := behindSession(t, st, uid, func(s *Session) {
		for gid := codec.GroupID(1); gid <= groups; gid++ {
			s.holdGroupLocked(gid)
			s.setGroupLocked(gid, 0, 0)
		}
	})
	for gid := codec.GroupID(1); gid <= groups; gid++ {
		st.addGroup(gid, 9)
	}
	n.resync(s)
	deadline := time.Now().Add(5 * time.Second)
	for g.waiting.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // time for more waiters to show
	if m := g.most.Load(); m != 1 {
		t.Fatalf("%d goroutines waited for the client at once, want 1", m)
	}
	g.unsent.Store(0)
	close(g.open)
	got := waitWritten(t, &g.recorder, groups)
	slices.Sort(got)
	for i, seq := range got {
		if want := codec.Seq(1000*(i+1) + 1); seq != want {
			t.Fatalf("written %v, want gseq 1 of each group", got)
		}
	}
}

// TestBehindClientGetsNoLiveWrites: a delivery for a client with a pump
// window unsent is not written at once but left to the pump, which writes
// it when the client has taken its output; the next one is written live.
func TestBehindClientGetsNoLiveWrites(t *testing.T) {
	st := newFakeStore()
	const uid = codec.UserID(7)
	n, _, g := behindSession(t, st, uid, nil)
	n.deliver([]pubsub.Notice{{To: uid, Deliveries: []codec.Delivery{st.add(uid, 1)}}})
	deadline := time.Now().Add(5 * time.Second)
	for g.waiting.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := g.got(); len(got) != 0 || g.waiting.Load() != 1 {
		t.Fatalf("written %v, %d pumps waiting: want nothing written and the pump waiting", got, g.waiting.Load())
	}
	g.unsent.Store(0)
	close(g.open)
	waitWritten(t, &g.recorder, 1)
	n.deliver([]pubsub.Notice{{To: uid, Deliveries: []codec.Delivery{st.add(uid, 2)}}})
	if got := g.got(); !equalSeqs(got, []codec.Seq{1, 2}) {
		t.Fatalf("written %v, want [1 2], the second at once", got)
	}
}
