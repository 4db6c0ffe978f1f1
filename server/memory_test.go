package server

import (
	"log/slog"
	"runtime"
	"testing"
	"time"
	"unsafe"
)

// One conn is kept per open connection: keep it within its size class.
func TestConnSize(t *testing.T) {
	if n := unsafe.Sizeof(conn{}); n > 240 {
		t.Fatalf("conn is %d bytes, want at most 240", n)
	}
}

func TestRegistry(t *testing.T) {
	var r registry
	conns := make([]*conn, 200)
	for i := range conns {
		conns[i] = &conn{shard: uint8(i % 3)}
		r.add(conns[i])
	}
	live := map[*conn]bool{}
	for i, c := range conns {
		if i%2 == 0 {
			r.remove(c)
		} else {
			live[c] = true
		}
	}
	r.remove(conns[199]) // the last of its shard
	delete(live, conns[199])
	seen := map[*conn]bool{}
	buf := r.each(nil, func(c *conn) {
		if seen[c] {
			t.Errorf("conn listed twice")
		}
		seen[c] = true
	})
	if len(seen) != len(live) {
		t.Fatalf("each listed %d conns, want %d", len(seen), len(live))
	}
	for c := range live {
		if !seen[c] {
			t.Fatalf("a live conn was not listed")
		}
		if sh := r.shards[c.shard].conns; sh[c.slot] != c {
			t.Fatalf("slot %d of shard %d does not hold its conn", c.slot, c.shard)
		}
	}
	if len(buf) != 0 {
		t.Fatalf("scratch buffer returned with %d entries", len(buf))
	}
	for c := range live {
		r.remove(c)
	}
	for i := range r.shards {
		if n := len(r.shards[i].conns); n != 0 {
			t.Fatalf("shard %d keeps %d conns", i, n)
		}
	}
}

func TestMemReleaser(t *testing.T) {
	m := newMemReleaser(time.Second, slog.Default())
	now := time.Now()
	m.tick(now.Add(5 * time.Second)) // no collection since start-up: nothing to release
	if m.released != m.cycles {
		t.Fatalf("released without a collection")
	}
	runtime.GC()
	m.tick(now) // a collection ran: a new quiet period starts
	before := m.released
	m.tick(now.Add(500 * time.Millisecond))
	if m.released != before {
		t.Fatalf("released before the idle period")
	}
	m.tick(now.Add(1500 * time.Millisecond))
	if m.released == before {
		t.Fatalf("not released after the idle period")
	}
	// Nothing collected since: no second release.
	after := m.released
	m.tick(time.Now().Add(10 * time.Second))
	if m.released != after {
		t.Fatalf("released twice without work in between")
	}
}
