package main

import (
	"strings"
	"testing"
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
	c := l.Counts()
	if c.Sent != 2 || c.SentWin != 1 || c.Acked != 3 || c.AckedWin != 1 || c.AckErr != 1 || c.Limited != 1 {
		t.Fatalf("%+v", c)
	}
	if c.AckLatency.Total != 2 {
		t.Fatalf("ack latency samples %d", c.AckLatency.Total)
	}
	var m LedgerCounts
	m.Add(c)
	m.Add(c)
	if m.Sent != 4 || m.AckLatency.Total != 4 || m.Limited != 2 {
		t.Fatalf("merge %+v", m)
	}
}

// TestLossAccounting runs the drain arithmetic of a worker: lost is
// expected (acked * fan-out) minus distinct deliveries.
func TestLossAccounting(t *testing.T) {
	w := newWorker(Config{Scenario: "group", Drain: 0})
	w.res.Fanout = 3
	l := w.ledger
	l.SetWindow(1, 0)
	rs := make([]recvState, 3)
	for c := uint64(1); c <= 4; c++ {
		l.sent(10)
		l.acked(10, 20, 0)
		for i := range rs {
			if c == 4 && i == 2 {
				continue // one recipient misses message 4
			}
			l.observe(&rs[i], int64(c), appendBody(nil, 10, 0, c, 40), 30)
		}
	}
	l.observe(&rs[0], 4, appendBody(nil, 10, 0, 4, 40), 30) // and one gets it twice
	_ = w.drain(t.Context())
	r := w.result()
	if r.Expected != 12 || r.Ledger.Delivered != 11 || r.Ledger.Dups != 1 {
		t.Fatalf("expected %d delivered %d dups %d", r.Expected, r.Ledger.Delivered, r.Ledger.Dups)
	}
	rep := TrafficReport{Lost: max(0, r.Expected-r.Ledger.Delivered)}
	if rep.Lost != 1 {
		t.Fatalf("lost %d", rep.Lost)
	}
}
