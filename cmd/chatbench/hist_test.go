package main

import (
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
)

func TestHistogramExactBelow256us(t *testing.T) {
	h := NewHistogram()
	for v := int64(0); v < 256; v++ {
		h.Record(v)
	}
	s := h.Snapshot()
	if s.Total != 256 || s.Min != 0 || s.Max != 255 {
		t.Fatalf("total %d min %d max %d", s.Total, s.Min, s.Max)
	}
	for _, c := range []struct {
		p    float64
		want int64
	}{{50, 127}, {90, 230}, {99, 253}, {100, 255}, {0, 0}} {
		if got := s.Percentile(c.p); got != c.want {
			t.Errorf("p%v = %d, want %d", c.p, got, c.want)
		}
	}
}

func TestHistogramBucketsCoverRange(t *testing.T) {
	prevHi := int64(-1)
	for i := 0; i < histBuckets; i++ {
		lo, w := histBounds(i)
		if lo != prevHi+1 {
			t.Fatalf("bucket %d starts at %d, previous ended at %d", i, lo, prevHi)
		}
		if histIndex(lo) != i || histIndex(lo+w-1) != i {
			t.Fatalf("bucket %d [%d,%d] maps to %d and %d", i, lo, lo+w-1, histIndex(lo), histIndex(lo+w-1))
		}
		if i >= histSub && float64(w)/float64(lo) > 1.0/histHalf+1e-9 {
			t.Fatalf("bucket %d: width %d at %d is more than 1/%d", i, w, lo, histHalf)
		}
		prevHi = lo + w - 1
	}
	if prevHi < histMax {
		t.Fatalf("buckets end at %d, below %d", prevHi, histMax)
	}
}

func TestHistogramPercentilesMatchSortedData(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	h := NewHistogram()
	var vals []int64
	for i := 0; i < 100000; i++ {
		// Log-uniform from 1 µs to 10 s.
		v := int64(math.Exp(r.Float64() * math.Log(1e7)))
		vals = append(vals, v)
		h.Record(v)
	}
	slices.Sort(vals)
	s := h.Snapshot()
	for _, p := range []float64{50, 90, 99, 99.9, 100} {
		exact := vals[int(math.Ceil(p/100*float64(len(vals))))-1]
		got := s.Percentile(p)
		if got < exact || float64(got-exact) > float64(exact)/histHalf+1 {
			t.Errorf("p%v = %d, exact %d: more than 1/%d off", p, got, exact, histHalf)
		}
	}
	if s.Max != vals[len(vals)-1] || s.Min != vals[0] {
		t.Errorf("min/max %d/%d, want %d/%d", s.Min, s.Max, vals[0], vals[len(vals)-1])
	}
}

func TestHistogramClampsAndNegative(t *testing.T) {
	h := NewHistogram()
	h.Record(-5)
	h.Record(120_000_000) // 120 s, above the 60 s range
	s := h.Snapshot()
	if s.Min != 0 || s.Max != 120_000_000 {
		t.Fatalf("min %d max %d", s.Min, s.Max)
	}
	if got := s.Percentile(100); got != 120_000_000 {
		t.Fatalf("p100 = %d: the exact max must win", got)
	}
	if got := s.Percentile(50); got != 0 {
		t.Fatalf("p50 = %d", got)
	}
}

func TestHistogramMergeAndSummary(t *testing.T) {
	a, b := NewHistogram(), NewHistogram()
	for i := int64(1); i <= 1000; i++ {
		a.Record(i * 1000) // 1..1000 ms
	}
	b.Record(5_000_000)
	var m HistSnapshot
	m.Merge(HistSnapshot{}) // empty: no effect
	m.Merge(a.Snapshot())
	m.Merge(b.Snapshot())
	if m.Total != 1001 || m.Min != 1000 || m.Max != 5_000_000 {
		t.Fatalf("merged total %d min %d max %d", m.Total, m.Min, m.Max)
	}
	sum := m.Summary()
	if sum.Count != 1001 || sum.Max != 5000 || sum.Min != 1 {
		t.Fatalf("summary %+v", sum)
	}
	if sum.P50 < 499 || sum.P50 > 506 {
		t.Fatalf("p50 %.3f ms, want about 501", sum.P50)
	}
	if (HistSnapshot{}).Summary().Count != 0 || (HistSnapshot{}).Percentile(99) != 0 {
		t.Fatal("empty snapshot")
	}
}

func TestHistogramConcurrentRecord(t *testing.T) {
	h := NewHistogram()
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10000; i++ {
				h.Record(int64(i))
			}
		}()
	}
	wg.Wait()
	s := h.Snapshot()
	if s.Total != 80000 || h.Count() != 80000 || s.Max != 9999 || s.Min != 0 {
		t.Fatalf("total %d max %d min %d", s.Total, s.Max, s.Min)
	}
}

// TestHistogramSince checks that the difference of two snapshots holds what
// was recorded between them: the same counts as a histogram of those values
// alone, so the same percentiles, and their min and max to a bucket.
func TestHistogramSince(t *testing.T) {
	h := NewHistogram()
	for range 5000 {
		h.Record(rand.Int64N(900_000)) // up to 0.9 s
	}
	before := h.Snapshot()
	if d := before.Since(before); d.Total != 0 || d.Max != 0 || d.Percentile(99) != 0 {
		t.Fatalf("nothing recorded, Since has total %d max %d", d.Total, d.Max)
	}
	later := NewHistogram()
	for range 3000 {
		v := 2_000 + rand.Int64N(40_000) // 2..42 ms
		h.Record(v)
		later.Record(v)
	}
	want := later.Snapshot()
	got := h.Snapshot().Since(before)
	if got.Total != want.Total || got.Sum != want.Sum || len(got.Counts) != len(want.Counts) {
		t.Fatalf("Since: total %d sum %d buckets %d, want %d %d %d", got.Total, got.Sum, len(got.Counts), want.Total, want.Sum, len(want.Counts))
	}
	for i, c := range want.Counts {
		if got.Counts[i] != c {
			t.Fatalf("bucket %d: %d, want %d", i, got.Counts[i], c)
		}
	}
	for _, p := range []float64{50, 90, 99, 99.9} {
		g, w := got.Percentile(p), want.Percentile(p)
		if histIndex(g) != histIndex(w) {
			t.Errorf("p%v = %d, want %d (bucket of)", p, g, w)
		}
	}
	if histIndex(got.Min) != histIndex(want.Min) || histIndex(got.Max) != histIndex(want.Max) {
		t.Errorf("min %d max %d, want %d %d to a bucket", got.Min, got.Max, want.Min, want.Max)
	}
	// The earlier values went up to 0.9 s: none of them may show.
	if got.Max >= 42_000+42_000/histHalf {
		t.Errorf("max %d includes earlier values", got.Max)
	}
	// A value above histMax keeps its exact max in the last bucket.
	b := h.Snapshot()
	h.Record(2 * histMax)
	if d := h.Snapshot().Since(b); d.Total != 1 || d.Max != 2*histMax {
		t.Errorf("beyond histMax: total %d max %d", d.Total, d.Max)
	}
}
