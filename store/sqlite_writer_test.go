package store

import (
	"math/bits"
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
