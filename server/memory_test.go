package server

import (
	"bytes"
	"io"
	"log/slog"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/panjf2000/gnet/v2"
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
	// Only the test's own collections count: none may start on its own.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	m := newMemReleaser(time.Second, slog.Default())
	now := time.Now()
	start := m.released
	m.tick(now.Add(5 * time.Second)) // no collection since start-up: nothing to release
	if m.released != start {
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

// iovWriter fails a writev of more than maxIOV buffers, as Linux does.
type iovWriter struct {
	got   []byte
	calls int
}

func (w *iovWriter) Write(b []byte) (int, error) {
	w.calls++
	w.got = append(w.got, b...)
	return len(b), nil
}

func (w *iovWriter) Writev(bs [][]byte) (int, error) {
	w.calls++
	if len(bs) > 1024 {
		return 0, syscall.EINVAL
	}
	n := 0
	for _, b := range bs {
		w.got = append(w.got, b...)
		n += len(b)
	}
	return n, nil
}

// A burst of more frames than one writev takes goes out whole, in order.
func TestWriteFramesChunks(t *testing.T) {
	for _, n := range []int{1, 2, 1024, 1025, 2049, 3000} {
		var frames [][]byte
		var want []byte
		for i := 0; i < n; i++ {
			f := []byte{byte(i), byte(i >> 8)}
			frames = append(frames, f)
			want = append(want, f...)
		}
		w := &iovWriter{}
		if err := writeFrames(w, frames); err != nil {
			t.Fatalf("%d frames: %v", n, err)
		}
		if !bytes.Equal(w.got, want) {
			t.Fatalf("%d frames: wrong bytes or order", n)
		}
		if wantCalls := (n + 1023) / 1024; w.calls != wantCalls {
			t.Fatalf("%d frames: %d writes, want %d", n, w.calls, wantCalls)
		}
	}
}

// TestAdmitLoneFrameAboveMaxPendingBytes: a frame larger than
// max-pending-bytes is admitted when nothing is pending (else it would be
// refused at every retry), and the byte limit holds once something is.
func TestAdmitLoneFrameAboveMaxPendingBytes(t *testing.T) {
	c := &conn{srv: &Server{cfg: Config{MaxPending: 256, MaxPendingBytes: 1000, RatePerSec: -1}}}
	if got := c.admit(0, 4000); got != admitted {
		t.Fatalf("admit 4,000 bytes with none pending: %d, want admitted", got)
	}
	c.qbytes = 600
	if got := c.admit(0, 600); got != queueFull {
		t.Fatalf("admit 600 bytes with 600 pending, limit 1000: %d, want queueFull", got)
	}
	if got := c.admit(0, 400); got != admitted {
		t.Fatalf("admit 400 bytes with 600 pending, limit 1000: %d, want admitted", got)
	}
}

// fakeGC is a gnet.Conn whose client reads nothing: every byte written
// stays in its outbound buffer. AsyncWritev's callbacks run in order on
// one goroutine, as on an event loop.
type fakeGC struct {
	gnet.Conn
	mu   sync.Mutex
	outb int
	loop chan func()
}

func (f *fakeGC) Write(b []byte) (int, error) {
	f.mu.Lock()
	f.outb += len(b)
	f.mu.Unlock()
	return len(b), nil
}
func (f *fakeGC) Writev(bs [][]byte) (int, error) {
	n := 0
	for _, b := range bs {
		n += len(b)
	}
	return f.Write(make([]byte, n))
}
func (f *fakeGC) OutboundBuffered() int { f.mu.Lock(); defer f.mu.Unlock(); return f.outb }
func (f *fakeGC) Fd() int               { return 0 }
func (f *fakeGC) AsyncWritev(_ [][]byte, cb gnet.AsyncCallback) error {
	f.loop <- func() { _ = cb(f, nil) }
	return nil
}

// TestUnsentNeverBelowSent: nothing is ever taken, so Unsent must never
// be less than what was Sent before it was called, flushes or not.
func TestUnsentNeverBelowSent(t *testing.T) {
	gc := &fakeGC{loop: make(chan func(), 1<<16)}
	srv := &Server{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	srv.cfg.MaxOutbound = 1 << 40
	c := &conn{srv: srv, gc: gc}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case f := <-gc.loop:
				f()
			case <-done:
				return
			}
		}
	}()
	defer close(done)
	var sent atomic.Int64
	frame := make([]byte, 100)
	stop := time.Now().Add(time.Second)
	go func() {
		for time.Now().Before(stop) && sent.Load() < 1<<29 {
			c.Send(frame)
			sent.Add(int64(len(frame)))
		}
	}()
	low := 0
	for time.Now().Before(stop) {
		before := sent.Load()
		if u := c.Unsent(); int64(u) < before {
			low++
			if low == 1 {
				t.Errorf("Unsent %d with %d sent and nothing taken", u, before)
			}
		}
	}
	if low > 0 {
		t.Errorf("Unsent read below what was sent %d times", low)
	}
}
