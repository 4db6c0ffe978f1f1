package store

import (
	"math/bits"
	"slices"
	"testing"
)

// TestChunkFor: a commit of n rows is cut into n/64 statements of 64 rows
// and one per bit of the rest, covering every row once.
func TestChunkFor(t *testing.T) {
	for n := 1; n <= 300; n++ {
		stmts, covered := 0, 0
		for covered < n {
			size := chunkSizes[chunkFor(n-covered)]
			if size > n-covered {
				t.Fatalf("n=%d: a %d-row chunk with %d rows left", n, size, n-covered)
			}
			covered += size
			stmts++
		}
		if want := n/64 + bits.OnesCount(uint(n%64)); stmts != want {
			t.Fatalf("n=%d: %d statements, want %d", n, stmts, want)
		}
	}
}

// TestPostInTicketOrder: post-commit work that arrives out of ticket order
// (two lanes) runs in ticket order, and a skipped ticket (a failed COMMIT)
// does not hold up the ones after it.
func TestPostInTicketOrder(t *testing.T) {
	b := &batcher{post: make(chan posted, 8), stopped: make(chan struct{})}
	go b.postLoop()
	var ran []uint64
	work := func(n uint64) posted { return posted{n, func() { ran = append(ran, n) }} }
	b.post <- work(2)
	b.post <- work(0)
	b.post <- work(4)
	b.skip(1)
	b.post <- work(3)
	close(b.post)
	<-b.stopped
	if want := []uint64{0, 2, 3, 4}; !slices.Equal(ran, want) {
		t.Fatalf("ran %v, want %v", ran, want)
	}
}
