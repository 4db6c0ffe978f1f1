package service

import (
	"context"
	"strings"
	"testing"

	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/pubsub"
)

// BenchmarkGroupFanOut times the node's side of a group message's fan-out
// on one node: from the commit hook (Node.committed) with a 100-member
// group's entries, through the in-process bus and the hub, to each
// member's session writing the one shared encoded frame to its transport.
// The store's side is BenchmarkSendGroup (store), the whole path through
// sockets chatbench's BenchmarkGroupInProcess.
//
//	go test -run '^$' -bench GroupFanOut ./service
func BenchmarkGroupFanOut(b *testing.B) {
	const members, gid = 100, codec.GroupID(1)
	st := newFakeStore()
	n := newNode(b, st)
	conns := make([]*countFrames, members)
	for i := range conns {
		conns[i] = &countFrames{}
		addMember(n, st, gid, codec.UserID(i+1), conns[i])
	}
	body := strings.Repeat("x", 100)
	entries := make([]Entry, 0, members)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d := codec.Delivery{MsgID: codec.MsgGroupChat, ID: 1, Name: "sender", GroupID: gid, Msg: body, GSeq: codec.Seq(i + 1)}
		entries = entries[:0]
		for _, uid := range st.members[gid] { // the recipients, then the sender
			if uid != 1 {
				entries = append(entries, Entry{To: uid, Delivery: d})
			}
		}
		entries = append(entries, Entry{To: 1, Delivery: d})
		n.committed(entries)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N*(members-1))/b.Elapsed().Seconds(), "deliveries/s")
	// Every recipient was sent every message, each in order (a gap would
	// have made its session read the fake's empty log instead), and the
	// sender none of its own.
	for i, c := range conns {
		want := b.N
		if i == 0 {
			want = 0
		}
		c.mu.Lock()
		got := c.n
		c.mu.Unlock()
		if got != want {
			b.Fatalf("member %d's transport was called %d times, want %d (one a message)", i+1, got, want)
		}
	}
}

// newNode starts a Node on st with the in-process bus, closed at the end
// of the test.
func newNode(tb testing.TB, st Store) *Node {
	tb.Helper()
	n, err := New(context.Background(), Config{Store: st, Bus: pubsub.NewMemory()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(n.Close)
	return n
}

// addMember makes uid a member of group gid in st and opens its session on
// n, logged in, following the group from its start, writing to t.
func addMember(n *Node, st *fakeStore, gid codec.GroupID, uid codec.UserID, t Transport) {
	st.mu.Lock()
	st.members[gid] = append(st.members[gid], uid)
	st.mu.Unlock()
	s := n.Open(t)
	s.mu.Lock()
	s.uid, s.name = uid, "u"
	s.setGroupLocked(gid, 0, 0)
	s.mu.Unlock()
	n.hub.swap(uid, s)
}

// BenchmarkGroupEntriesAfterJoin times what a commit hook does for a
// message to a 20,000-member group whose recipients were read before a
// member joined: it reads the members again and finds the one missing
// (Node.groupEntries). Its cost must grow with the group, not with its
// square: the hook runs on the goroutine that sends every ACK and
// delivery of the node.
//
//	go test -run '^$' -bench GroupEntriesAfterJoin ./service
func BenchmarkGroupEntriesAfterJoin(b *testing.B) {
	const members, gid = 20000, codec.GroupID(1)
	st := newFakeStore()
	n := newNode(b, st)
	st.mu.Lock()
	for i := 1; i <= members; i++ {
		st.members[gid] = append(st.members[gid], codec.UserID(i))
	}
	st.mu.Unlock()
	d := codec.Delivery{MsgID: codec.MsgGroupChat, ID: 1, Name: "sender", GroupID: gid, Msg: "x", GSeq: 1}
	entries := make([]Entry, 0, members)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		entries = entries[:0]
		for uid := codec.UserID(1); uid < members; uid++ { // all but the one who joined
			entries = append(entries, Entry{To: uid, Delivery: d})
		}
		extra := n.groupEntries(context.Background(), entries)
		if len(extra) != 1 || extra[0].To != members {
			b.Fatalf("extra entries %d, want 1 for user %d", len(extra), members)
		}
	}
}
