package main

import (
	"math"
	"math/bits"
	"sort"
	"sync/atomic"
)

// Histogram is a log-linear latency histogram in the spirit of HdrHistogram:
// values are microseconds; every value below 2^histSubBits is its own
// bucket (1 µs resolution), above that each power-of-two range is split
// into 2^(histSubBits-1) equal buckets, so the relative error stays below
// 1/2^(histSubBits-1) (0.8%). Values above histMax (60 s) are clamped into
// the last bucket, but Max stays exact. Record is lock-free and safe for
// concurrent use; Snapshot copies the counts out.
type Histogram struct {
	counts [histBuckets]atomic.Int64
	total  atomic.Int64
	sum    atomic.Int64
	min    atomic.Int64 // math.MaxInt64 while empty
	max    atomic.Int64
}

const (
	histSubBits = 8
	histSub     = 1 << histSubBits     // exact buckets: 0..255 µs
	histHalf    = histSub / 2          // buckets per octave above that
	histMax     = 60_000_000           // 60 s in µs
	histOctaves = 26 - histSubBits + 1 // 2^26 µs > 60 s
	histBuckets = histSub + histOctaves*histHalf
)

// NewHistogram returns an empty histogram.
func NewHistogram() *Histogram {
	h := &Histogram{}
	h.min.Store(math.MaxInt64)
	return h
}

// histIndex is the bucket of v (µs, v >= 0, v <= histMax).
func histIndex(v int64) int {
	if v < histSub {
		return int(v)
	}
	k := bits.Len64(uint64(v)) - 1 // v in [2^k, 2^(k+1)), k >= histSubBits
	shift := k - (histSubBits - 1)
	return histSub + (k-histSubBits)*histHalf + int(v>>shift) - histHalf
}

// histBounds is the smallest value of bucket i and its width.
func histBounds(i int) (lo, width int64) {
	if i < histSub {
		return int64(i), 1
	}
	j := i - histSub
	k := j/histHalf + histSubBits
	shift := k - (histSubBits - 1)
	return int64(histHalf+j%histHalf) << shift, 1 << shift
}

// Record adds one value in microseconds; negative values count as 0.
func (h *Histogram) Record(us int64) {
	if us < 0 {
		us = 0
	}
	v := min(us, histMax)
	h.counts[histIndex(v)].Add(1)
	h.total.Add(1)
	h.sum.Add(us)
	for {
		m := h.min.Load()
		if us >= m || h.min.CompareAndSwap(m, us) {
			break
		}
	}
	for {
		m := h.max.Load()
		if us <= m || h.max.CompareAndSwap(m, us) {
			break
		}
	}
}

// Count is the number of recorded values.
func (h *Histogram) Count() int64 { return h.total.Load() }

// HistSnapshot is a plain, mergeable copy of a Histogram, also its JSON form
// between chatbench processes (sparse: bucket index -> count).
type HistSnapshot struct {
	Counts map[int]int64 `json:"counts"`
	Total  int64         `json:"total"`
	Sum    int64         `json:"sum"`
	Min    int64         `json:"min"`
	Max    int64         `json:"max"`
}

// Snapshot copies the current state. Concurrent Records may be half-seen
// (total and counts may differ by a few); percentiles use the counts.
func (h *Histogram) Snapshot() HistSnapshot {
	s := HistSnapshot{Counts: map[int]int64{}, Sum: h.sum.Load(), Min: h.min.Load(), Max: h.max.Load()}
	for i := range h.counts {
		if c := h.counts[i].Load(); c > 0 {
			s.Counts[i] = c
			s.Total += c
		}
	}
	if s.Total == 0 {
		s.Min, s.Max = 0, 0
	}
	return s
}

// Merge adds o into s.
func (s *HistSnapshot) Merge(o HistSnapshot) {
	if o.Total == 0 {
		return
	}
	if s.Counts == nil {
		s.Counts = map[int]int64{}
	}
	if s.Total == 0 || o.Min < s.Min {
		s.Min = o.Min
	}
	if o.Max > s.Max {
		s.Max = o.Max
	}
	for i, c := range o.Counts {
		s.Counts[i] += c
	}
	s.Total += o.Total
	s.Sum += o.Sum
}

// Since returns what was recorded between prev and s, two snapshots of the
// same histogram, prev the earlier. Its Min and Max are the bounds of the
// lowest and highest buckets that gained values (clamped to s's Min and
// Max), so they are exact to a bucket's width, and Max exact in histMax's
// bucket.
func (s HistSnapshot) Since(prev HistSnapshot) HistSnapshot {
	d := HistSnapshot{Counts: map[int]int64{}, Sum: s.Sum - prev.Sum}
	lo, hi := -1, -1
	for i, c := range s.Counts {
		if c -= prev.Counts[i]; c > 0 {
			d.Counts[i] = c
			d.Total += c
			if lo < 0 || i < lo {
				lo = i
			}
			hi = max(hi, i)
		}
	}
	if d.Total == 0 {
		return HistSnapshot{Counts: map[int]int64{}}
	}
	l, _ := histBounds(lo)
	d.Min = min(max(l, s.Min), s.Max)
	d.Max = s.Max
	if hi < histIndex(histMax) { // values above histMax land in histMax's bucket
		b, w := histBounds(hi)
		d.Max = max(min(b+w-1, s.Max), d.Min)
	}
	return d
}

// Percentile returns the value at or below which p percent (0..100) of the
// values lie: the highest value equivalent to the bucket holding that rank,
// clamped to [Min, Max]; in the highest occupied bucket, Max. 0 when empty.
func (s HistSnapshot) Percentile(p float64) int64 {
	if s.Total == 0 {
		return 0
	}
	rank := int64(math.Ceil(p / 100 * float64(s.Total)))
	rank = max(rank, 1)
	idx := make([]int, 0, len(s.Counts))
	for i := range s.Counts {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	var cum int64
	for _, i := range idx {
		cum += s.Counts[i]
		if cum >= s.Total {
			return s.Max // the highest bucket holds Max (or clamps above histMax)
		}
		if cum >= rank {
			lo, w := histBounds(i)
			v := lo + w - 1
			return min(max(v, s.Min), s.Max)
		}
	}
	return s.Max
}

// LatencySummary is what reports show of a histogram, in milliseconds.
type LatencySummary struct {
	Count int64   `json:"count"`
	Mean  float64 `json:"mean_ms"`
	Min   float64 `json:"min_ms"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p999_ms"`
	Max   float64 `json:"max_ms"`
}

// Summary computes the standard percentiles.
func (s HistSnapshot) Summary() LatencySummary {
	ms := func(us int64) float64 { return float64(us) / 1000 }
	l := LatencySummary{Count: s.Total}
	if s.Total == 0 {
		return l
	}
	l.Mean = float64(s.Sum) / float64(s.Total) / 1000
	l.Min, l.Max = ms(s.Min), ms(s.Max)
	l.P50, l.P90 = ms(s.Percentile(50)), ms(s.Percentile(90))
	l.P99, l.P999 = ms(s.Percentile(99)), ms(s.Percentile(99.9))
	return l
}
