package main

import "testing"

// TestSecondsLine checks the summary of the seconds: the ends of the window,
// with few latencies, are left out.
func TestSecondsLine(t *testing.T) {
	ss := []SecondStats{
		{Latencies: 40, P99: 1, Max: 2}, // the window's first, partial second
		{Latencies: 26000, P99: 20, Max: 30},
		{Latencies: 26100, P99: 40, Max: 45},
		{Latencies: 25900, P99: 10, Max: 12},
		{Latencies: 9000, P99: 90, Max: 99},  // a third of the median: left out
		{Latencies: 13000, P99: 15, Max: 16}, // half the median: kept
	}
	want := "p99 lowest 10.0ms, median 20.0ms, highest 40.0ms; highest max 45.0ms (4 s)"
	if got := secondsLine(ss); got != want {
		t.Errorf("secondsLine = %q, want %q", got, want)
	}
}
