package main

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

func TestBodyRoundTrip(t *testing.T) {
	b := appendBody(nil, 1700000000123456789, 42, 7, 100)
	if len(b) != 100 {
		t.Fatalf("len %d", len(b))
	}
	ts, s, c, ok := parseBody(b)
	if !ok || ts != 1700000000123456789 || s != 42 || c != 7 {
		t.Fatalf("parse %q: %d %d %d %v", b, ts, s, c, ok)
	}
	short := appendBody(nil, 5, 1, 2, 1) // size below the stamp: no padding
	if string(short) != "t=5;s=1;c=2;" {
		t.Fatalf("short body %q", short)
	}
	for _, bad := range []string{"", "hello", "t=1;s=2;", "t=1;s=x;c=3;", "t=1;s=2;c=3", strings.Repeat("9", 30)} {
		if _, _, _, ok := parseBody([]byte(bad)); ok {
			t.Errorf("parseBody(%q) accepted", bad)
		}
	}
}

func TestLedgerObserve(t *testing.T) {
	l := NewLedger()
	l.SetWindow(1, 0)
	var r recvState
	body := func(sender int32, c uint64) []byte { return appendBody(nil, 1000, sender, c, 40) }
	now := int64(3000)
	l.observe(&r, 5, body(1, 1), now) // first seq seen: any value
	l.observe(&r, 6, body(1, 2), now)
	l.observe(&r, 7, body(2, 1), now) // another sender, same counter: distinct
	if l.Delivered.Load() != 3 || l.Dups.Load() != 0 || l.SeqGaps.Load() != 0 {
		t.Fatalf("clean: %+v", l.Counts())
	}
	l.observe(&r, 7, body(2, 1), now) // redelivered: same seq, same id
	if l.Dups.Load() != 1 || l.SeqDups.Load() != 1 || l.Delivered.Load() != 3 {
		t.Fatalf("dup: dups %d seqdups %d delivered %d", l.Dups.Load(), l.SeqDups.Load(), l.Delivered.Load())
	}
	l.observe(&r, 10, body(1, 3), now) // seqs 8 and 9 skipped
	if l.SeqGaps.Load() != 2 || l.Delivered.Load() != 4 {
		t.Fatalf("gap: %d", l.SeqGaps.Load())
	}
	l.observe(&r, 11, []byte("hello from a human"), now)
	if l.Foreign.Load() != 1 || l.Delivered.Load() != 4 {
		t.Fatal("foreign message counted as delivered")
	}
	l.observe(&r, 12, body(1, 1000), now) // far counter: the bitset grows
	if l.Delivered.Load() != 5 {
		t.Fatal("large counter")
	}
	lat := l.Latency.Snapshot()
	if lat.Total != 5 || lat.Min != 2 || lat.Max != 2 { // (3000-1000) ns = 2 µs
		t.Fatalf("latency %+v", lat)
	}
}

func TestLedgerWindowAndAcks(t *testing.T) {
	l := NewLedger()
	l.SetWindow(100, 200)
	l.sent(50)
	l.sent(150)
	l.acked(150, 160, 0)
	l.acked(50, 60, 0)   // before the window: counted, not timed
	l.acked(150, 250, 0) // ACK after the window: total only, but timed
	l.acked(150, 170, 8)
	l.SendErr.Add(1)
	// Paced sends: the lag of those due in the window is recorded,
	// whenever they were written.
	l.lagged(190, 7190) // written after the window: 7 µs late
	l.lagged(50, 150)   // due before the window
	c := l.Counts()
	if c.Sent != 2 || c.SentWin != 1 || c.SendErr != 1 || c.Acked != 3 || c.AckedWin != 1 || c.AckErr != 1 || c.Limited != 1 {
		t.Fatalf("%+v", c)
	}
	if c.AckLatency.Total != 2 {
		t.Fatalf("ack latency samples %d", c.AckLatency.Total)
	}
	if c.SendLag.Total != 1 || c.SendLag.Max != 7 {
		t.Fatalf("send lag %+v", c.SendLag)
	}
	var m LedgerCounts
	m.Add(c)
	m.Add(c)
	if m.Sent != 4 || m.SendErr != 2 || m.AckLatency.Total != 4 || m.SendLag.Total != 2 || m.Limited != 2 {
		t.Fatalf("merge %+v", m)
	}
}

// chatWorker is a chat worker measuring from the start with pairs
// senders, users [0, pairs), each sending to users[pairs+i], on
// connections that are not started: tests drive their hooks.
func chatWorker(pairs int) (*worker, []*sender) {
	w := newWorker(Config{Scenario: "chat", Inflight: 1})
	w.ledger.SetWindow(1, 0)
	w.makeUsers(2 * pairs)
	for _, u := range w.users {
		u.c = newConn(nil)
		w.receiveHooks(u.c)
	}
	w.pairs, w.res.Fanout = pairs, 1
	return w, w.senders()
}

// ack plays the ACK of s's message counter with errno.
func (s *sender) ack(counter uint64, errno int64) {
	s.c.onAck(s.c, pend{sendNanos: 10, counter: counter}, errno, 0, 20)
}

// TestLossPerMessage runs a chat drain in which the count would net out:
// recipient 2 misses an acked message but gets one whose ACK was an error,
// and recipient 3 also gets one of sender 0's messages. Loss is counted
// message by message: one lost, two extra.
func TestLossPerMessage(t *testing.T) {
	w, ss := chatWorker(2)
	l := w.ledger
	deliver := func(to int, seq int64, from int32, counter uint64) {
		w.users[to].c.delivered(seq, appendBody(nil, 10, from, counter, 40), 30)
	}
	for c := uint64(1); c <= 5; c++ {
		l.sent(10)
		errno := int64(0)
		if c == 5 {
			errno = 10
		}
		ss[0].ack(c, errno)
		if c != 4 {
			deliver(2, int64(c), 0, c) // not 4, acked; 5, not acked
		}
	}
	for c := uint64(1); c <= 2; c++ {
		l.sent(10)
		ss[1].ack(c, 0)
		deliver(3, int64(c), 1, c)
	}
	deliver(3, 3, 0, 1) // sender 0's message, to sender 1's recipient
	_ = w.drain(t.Context())
	r := w.result()
	if r.Lost != 1 || r.Extra != 2 {
		t.Errorf("lost %d extra %d, want 1 and 2", r.Lost, r.Extra)
	}
	// The net count is fooled: more delivered than expected.
	if r.Expected != 6 || r.Ledger.Delivered != 7 || r.Ledger.Dups != 0 {
		t.Errorf("expected %d delivered %d dups %d", r.Expected, r.Ledger.Delivered, r.Ledger.Dups)
	}
	if !r.DrainTimedOut {
		t.Error("a drain that ended with an acked message missing did not say it timed out")
	}
}

// TestLossPerMessageDrained: with every acked message delivered the drain
// ends at once, also when a duplicate delivery and an ACK error make the
// counts uneven.
func TestLossPerMessageDrained(t *testing.T) {
	w, ss := chatWorker(1)
	w.cfg.Drain = time.Minute
	for c := uint64(1); c <= 3; c++ {
		w.ledger.sent(10)
		ss[0].ack(c, 0)
		w.users[1].c.delivered(int64(c), appendBody(nil, 10, 0, c, 40), 30)
	}
	w.ledger.sent(10)
	ss[0].ack(4, 10) // refused: not expected
	w.users[1].c.delivered(3, appendBody(nil, 10, 0, 3, 40), 30)
	t0 := time.Now()
	_ = w.drain(t.Context())
	r := w.result()
	if r.Lost != 0 || r.Extra != 0 || r.DrainTimedOut || r.Ledger.Dups != 1 || r.Ledger.AckErr != 1 {
		t.Fatalf("lost %d extra %d timed out %v, counts %+v", r.Lost, r.Extra, r.DrainTimedOut, r.Ledger)
	}
	if d := time.Since(t0); d > 10*time.Second {
		t.Fatalf("drain took %v with nothing outstanding", d)
	}
}

func TestGSeqSet(t *testing.T) {
	var s gseqSet
	s.init(1)
	add := func(g int64, wantAdded bool, wantHoles int64) {
		t.Helper()
		added, holes := s.add(g)
		if added != wantAdded || holes != wantHoles {
			t.Fatalf("add(%d) = %v, %d; want %v, %d (set lo %d hi %d)", g, added, holes, wantAdded, wantHoles, s.lo, s.hi)
		}
	}
	add(1, true, 0)
	add(2, true, 0)
	add(5, true, 2) // 3 and 4 open
	add(4, true, -1)
	add(4, false, 0)
	add(2, false, 0) // below the prefix
	add(3, true, -1)
	if s.lo != 6 || s.hi != 5 {
		t.Fatalf("prefix lo %d hi %d", s.lo, s.hi)
	}
	// A long run with one hole held open at 100 while 10,000 more arrive:
	// the words above the hole stay; once it closes the prefix swallows
	// them and the window shrinks back to a word.
	var open int64
	for g := int64(6); g <= 10_000; g++ {
		if g == 100 {
			continue
		}
		_, h := s.add(g)
		open += h
	}
	if open != 1 || s.lo != 100 || s.hi != 10_000 {
		t.Fatalf("open %d lo %d hi %d", open, s.lo, s.hi)
	}
	add(100, true, -1)
	if s.lo != 10_001 || len(s.w) > 1 {
		t.Fatalf("after closing: lo %d, %d words", s.lo, len(s.w))
	}
	// Steady in-order traffic does not grow the window or allocate.
	g := s.lo
	if n := testing.AllocsPerRun(1000, func() { s.add(g); g++ }); n != 0 || len(s.w) > 1 {
		t.Fatalf("%v allocs, %d words", n, len(s.w))
	}
	// A jump beyond the span: the positions skipped are holes for good.
	hi := s.hi
	add(hi+gseqSpan+10, true, gseqSpan+9)
	add(hi+1, false, 0)
	// Not initialised: the first position added starts the set.
	var u gseqSet
	if added, holes := u.add(40); !added || holes != 0 || u.lo != 41 {
		t.Fatalf("lazy start: %v %d lo %d", added, holes, u.lo)
	}
	if added, holes := u.add(43); !added || holes != 2 {
		t.Fatalf("lazy start gap: %v %d", added, holes)
	}
}

// TestLedgerObserveGroup plays one member's view of a group log whose
// positions 2 and 5 are the member's own messages: the own ACKs race the
// deliveries of later messages in either order.
func TestLedgerObserveGroup(t *testing.T) {
	l := NewLedger()
	l.SetWindow(1, 0)
	var r recvState
	var g groupTrack
	g.cov.init(1)
	body := func(sender int32, c uint64) []byte { return appendBody(nil, 1000, sender, c, 40) }
	now := int64(4000)
	check := func(what string, holes, dups, reorders, delivered int64) {
		t.Helper()
		c := l.Counts()
		if c.GSeqHoles != holes || c.SeqDups != dups || c.Reorders != reorders || c.Delivered != delivered || c.SeqGaps != 0 {
			t.Fatalf("%s: holes %d dups %d reorders %d delivered %d gaps %d; want %d %d %d %d 0",
				what, c.GSeqHoles, c.SeqDups, c.Reorders, c.Delivered, c.SeqGaps, holes, dups, reorders, delivered)
		}
	}
	l.observeGroup(&r, &g, 1, body(1, 1), now)
	l.observeGroup(&r, &g, 3, body(1, 2), now) // 2 (own) not acknowledged yet
	check("ack behind", 1, 0, 0, 2)
	l.ownGroupSeq(&g, 2)
	check("ack arrived", 0, 0, 0, 2)
	l.ownGroupSeq(&g, 5) // ACK ahead of the delivery of 4
	check("ack ahead", 1, 0, 0, 2)
	l.observeGroup(&r, &g, 4, body(2, 1), now)
	l.observeGroup(&r, &g, 6, body(1, 3), now)
	check("clean", 0, 0, 0, 4)
	if lat := l.Latency.Snapshot(); lat.Total != 4 || lat.Min != 3 || lat.Max != 3 { // (4000-1000) ns = 3 µs
		t.Fatalf("group latency %+v", lat)
	}
	if c := l.Counts(); c.OwnGSeqs != 2 || g.checked.Load() != 4 {
		t.Fatalf("own %d checked %d", c.OwnGSeqs, g.checked.Load())
	}

	l.observeGroup(&r, &g, 6, body(1, 3), now) // redelivered
	check("redelivery", 0, 1, 0, 4)
	if l.Dups.Load() != 1 {
		t.Fatalf("message dups %d", l.Dups.Load())
	}
	l.observeGroup(&r, &g, 8, body(1, 4), now)
	l.observeGroup(&r, &g, 7, body(1, 5), now) // below 8: out of order
	check("reorder", 0, 1, 1, 6)
	l.ownGroupSeq(&g, 7) // an ACK claiming a position already delivered
	check("own gseq delivered", 0, 2, 1, 6)
	l.observeGroup(&r, &g, 11, body(1, 6), now) // 9 and 10 never come
	check("missing", 2, 2, 1, 7)
}

// TestWorkerResultMerge: the per-message figures and the send lag of the
// -procs children survive the JSON between processes and add up.
func TestWorkerResultMerge(t *testing.T) {
	l := NewLedger()
	l.SetWindow(1, 0)
	l.lagged(10, 2010) // 2 µs late
	var m WorkerResult
	for _, r := range []WorkerResult{
		{Ledger: l.Counts(), Lost: 1, Extra: 2},
		{Ledger: l.Counts(), Lost: 3, DrainTimedOut: true},
		{Ledger: l.Counts()},
	} {
		raw, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		var back WorkerResult
		if err := json.Unmarshal(raw, &back); err != nil {
			t.Fatal(err)
		}
		m.merge(back)
	}
	if m.Lost != 4 || m.Extra != 2 || !m.DrainTimedOut || m.Ledger.SendLag.Total != 3 || m.Ledger.SendLag.Max != 2 {
		t.Fatalf("merged lost %d extra %d drain timed out %v send lag %+v", m.Lost, m.Extra, m.DrainTimedOut, m.Ledger.SendLag)
	}
}

// TestLossPerMessageGroup: the drain of a group run sums the deliveries
// checked by gseq over the members' connections, and compares each
// member's deliveries with the sender's acked messages: a member that
// misses one shows a loss and a hole, one that gets a message whose ACK was
// an error an extra, although the counts (8 delivered of 8 expected) agree.
func TestLossPerMessageGroup(t *testing.T) {
	w := newWorker(Config{Scenario: "group", Groups: 1, GroupSize: 3, SendersPerGroup: 1, Inflight: 1})
	w.res.Fanout = 2
	l := w.ledger
	l.SetWindow(1, 0)
	var members [3]*bconn // member 0 sends; 1 and 2 receive
	for i := range members {
		members[i] = newConn(nil)
		w.receiveHooks(members[i])
		members[i].group(7, 1)
		w.users = append(w.users, &user{idx: i, gid: 7, c: members[i]})
	}
	ss := w.senders()
	if len(ss) != 1 || len(ss[0].rcpt) != 2 || ss[0].c != members[0] {
		t.Fatalf("senders %+v", ss)
	}
	for gs := int64(1); gs <= 4; gs++ {
		l.sent(10)
		members[0].onAck(members[0], pend{sendNanos: 10, gid: 7, counter: uint64(gs)}, 0, gs, 20)
		for _, m := range members[1:] {
			if gs == 3 && m == members[2] {
				continue
			}
			m.deliveredGroup(7, gs, appendBody(nil, 10, 0, uint64(gs), 40), 30)
		}
	}
	l.sent(10)
	members[0].onAck(members[0], pend{sendNanos: 10, gid: 7, counter: 5}, 10, 0, 20)
	members[1].deliveredGroup(7, 5, appendBody(nil, 10, 0, 5, 40), 30)
	_ = w.drain(t.Context())
	r := w.result()
	c := r.Ledger
	if r.Expected != 8 || c.Delivered != 8 || c.GSeqChecked != 8 || c.OwnGSeqs != 4 || c.GSeqHoles != 1 || c.SeqDups != 0 || c.Reorders != 0 || c.ConnLost != 0 {
		t.Fatalf("expected %d, counts %+v", r.Expected, c)
	}
	if r.Lost != 1 || r.Extra != 1 {
		t.Fatalf("lost %d extra %d, want 1 and 1", r.Lost, r.Extra)
	}
	if g := members[1].group(7, 0); g.last.Load() != 5 || g.trk.checked.Load() != 5 {
		t.Fatalf("member 1: last %d checked %d", g.last.Load(), g.trk.checked.Load())
	}
}

// groupMember is a group-scenario worker measuring from the start, and one
// connection of it (on nc, nil for none), a member of group 7 as user 1,
// whose own ACKs are tracked.
func groupMember(nc net.Conn, ackInterval time.Duration) (*worker, *bconn) {
	w := newWorker(Config{Scenario: "group", AckInterval: ackInterval})
	w.ledger.SetWindow(1, 0)
	c := newConn(nc)
	w.receiveHooks(c)
	c.onAck = w.onAck
	c.group(7, 1)
	return w, c
}

// TestGroupDeliveryAllocs: the whole per-delivery path of a group member
// (scan, group lookup, gseq check, duplicate check, latency) allocates
// nothing in steady state, own ACKs included.
func TestGroupDeliveryAllocs(t *testing.T) {
	w, c := groupMember(nil, time.Second)
	const runs = 2000
	frames := make([][]byte, 0, runs+1)
	var lastDelivered int64
	for gs := int64(1); len(frames) <= runs; gs++ {
		if gs%10 == 0 { // the member's own message: its ACK
			c.pending[uint64(gs)] = pend{sendNanos: 1, gid: 7, counter: uint64(gs / 10)}
			frames = append(frames, fmt.Appendf(nil, `{"msgid":11,"reqid":%d,"errno":0,"errmsg":"ok","ack":10,"time":"2026-01-01 00:00:00","gseq":%d}`, gs, gs))
			continue
		}
		frames = append(frames, fmt.Appendf(nil, `{"msgid":10,"id":2,"name":"u","groupid":7,"msg":"%s","time":"2026-01-01 00:00:00","gseq":%d}`,
			appendBody(nil, nowNanos(), 3, uint64(gs), 60), gs))
		lastDelivered = gs
	}
	var f frame
	i := 0
	n := testing.AllocsPerRun(runs, func() {
		if err := c.handle(frames[i], &f); err != nil {
			t.Fatal(err)
		}
		i++
	})
	if n != 0 {
		t.Errorf("%v allocations per delivery", n)
	}
	cnt := w.ledger.Counts()
	if cnt.Delivered+cnt.OwnGSeqs != runs+1 || cnt.GSeqHoles != 0 || cnt.SeqDups != 0 || cnt.Reorders != 0 || cnt.Latency.Total != cnt.Delivered {
		t.Fatalf("%+v", cnt)
	}
	if g := c.group(7, 0); g.last.Load() != lastDelivered || g.trk.checked.Load() != cnt.Delivered {
		t.Fatalf("last gseq %d (want %d), checked %d", g.last.Load(), lastDelivered, g.trk.checked.Load())
	}
	if n := c.acked.count(); n != cnt.OwnGSeqs {
		t.Fatalf("%d messages in the acked set, %d own ACKs", n, cnt.OwnGSeqs)
	}
}

// TestStaleMessagesOfAnEarlierRun: with reused users, a delivery stamped
// before this run began (an earlier run's unacknowledged message, sent
// again at login) is counted apart, not as this run's message; without
// reuse (since 0) it is an ordinary one.
func TestStaleMessagesOfAnEarlierRun(t *testing.T) {
	l := NewLedger()
	var r recvState
	l.since.Store(1000)
	l.account(&r, appendBody(nil, 999, 0, 1, 60), 2000)
	l.account(&r, appendBody(nil, 1001, 0, 1, 60), 2000)
	if l.Stale.Load() != 1 || l.Delivered.Load() != 1 || l.Dups.Load() != 0 {
		t.Fatalf("stale %d delivered %d dups %d, want 1 1 0", l.Stale.Load(), l.Delivered.Load(), l.Dups.Load())
	}
	l = NewLedger()
	r = recvState{}
	l.account(&r, appendBody(nil, 999, 0, 1, 60), 2000)
	if l.Stale.Load() != 0 || l.Delivered.Load() != 1 {
		t.Fatalf("without reuse: stale %d delivered %d, want 0 1", l.Stale.Load(), l.Delivered.Load())
	}
}
