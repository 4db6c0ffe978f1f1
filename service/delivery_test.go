package service

import (
	"context"
	"sync"
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
}

func (f *fakeStore) Secret(context.Context) ([]byte, error) { return []byte("k"), nil }
func (f *fakeStore) SetCommitHook(func([]Entry))            {}
func (f *fakeStore) Ack(context.Context, map[codec.UserID]codec.Seq) error {
	return nil
}

func (f *fakeStore) Inbox(_ context.Context, uid codec.UserID, after codec.Seq, limit int) ([]codec.Delivery, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []codec.Delivery
	for _, d := range f.inbox[uid] {
		if d.Seq > after && len(out) < limit {
			out = append(out, d)
		}
	}
	return out, nil
}

func (f *fakeStore) add(uid codec.UserID, seq codec.Seq) codec.Delivery {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := codec.Delivery{MsgID: codec.MsgOneChat, ID: 9, Name: "x", ToID: uid, Msg: "m", Seq: seq}
	f.inbox[uid] = append(f.inbox[uid], d)
	return d
}

// recorder is a Transport that decodes what is written.
type recorder struct {
	mu   sync.Mutex
	seqs []codec.Seq
}

// Send decodes every frame in buf (one Send may carry several).
func (r *recorder) Send(buf []byte) {
	for len(buf) > 0 {
		body, n, err := codec.Decode(buf, 1<<20)
		if err != nil {
			panic(err)
		}
		req, _ := codec.ParseRequest(body)
		r.mu.Lock()
		r.seqs = append(r.seqs, codec.Seq(*req.Seq))
		r.mu.Unlock()
		buf = buf[n:]
	}
}
func (r *recorder) Close() {}

func (r *recorder) got() []codec.Seq {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]codec.Seq(nil), r.seqs...)
}

// TestDeliveryOrderWithLateNotices: notices that arrive out of order, twice,
// or never (as across nodes) still yield every entry once, in seq order,
// because a gap makes the session read the inbox.
func TestDeliveryOrderWithLateNotices(t *testing.T) {
	st := &fakeStore{inbox: map[codec.UserID][]codec.Delivery{}}
	bus := pubsub.NewMemory()
	n, err := New(context.Background(), Config{Store: st, Bus: bus})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	rec := &recorder{}
	s := n.Open(rec)
	const uid = codec.UserID(7)
	s.mu.Lock()
	s.uid, s.name = uid, "u"
	s.mu.Unlock()
	n.hub.swap(uid, s)

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
	st := &fakeStore{inbox: map[codec.UserID][]codec.Delivery{}}
	n, err := New(context.Background(), Config{Store: st, Bus: pubsub.NewMemory()})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	rec := &recorder{}
	s := n.Open(rec)
	const uid = codec.UserID(8)
	s.mu.Lock()
	s.uid, s.name, s.pumping = uid, "u", true // a login is reading the (empty) inbox
	gen := s.gen
	s.mu.Unlock()
	n.hub.swap(uid, s)

	s.mu.Lock()
	if s.needsPumpLocked(true) {
		t.Fatal("a complete login with nothing new wants a pump")
	}
	s.pumping = true // the same login again, now with a resync in its window
	s.mu.Unlock()
	n.resync(s)    // refused: the login is reading
	st.add(uid, 1) // committed after the login's read; its notice was lost
	s.mu.Lock()
	pump := s.needsPumpLocked(true)
	s.mu.Unlock()
	if !pump {
		t.Fatal("a resync during the login's read was dropped")
	}
	n.pump(s, gen)
	if got := rec.got(); len(got) != 1 || got[0] != 1 {
		t.Fatalf("written %v, want [1]", got)
	}
}
