package main

import (
	"bytes"
	"strings"
	"testing"
)

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

// TestTrafficVerdict: each way a traffic run can go wrong fails it, and
// the table says what a paced run's latencies run from.
func TestTrafficVerdict(t *testing.T) {
	paced := func() *Report {
		return &Report{Scenario: "chat", Traffic: &TrafficReport{
			TargetRate: 1000, SentPerSec: 990, SendLag: &LatencySummary{Count: 1}}}
	}
	if !paced().ok() {
		t.Fatal("clean paced run not OK")
	}
	for name, spoil := range map[string]func(*TrafficReport){
		"lost":            func(t *TrafficReport) { t.Lost = 1 },
		"extra":           func(t *TrafficReport) { t.Extra = 1 },
		"unanswered":      func(t *TrafficReport) { t.Unanswered = 1 },
		"send error":      func(t *TrafficReport) { t.SendErrors = 1 },
		"connection lost": func(t *TrafficReport) { t.ConnLost = 1 },
		"drain timed out": func(t *TrafficReport) { t.DrainTimedOut = true },
		"fell behind":     func(t *TrafficReport) { t.SentPerSec = 979 },
	} {
		r := paced()
		spoil(r.Traffic)
		if r.ok() {
			t.Errorf("%s: OK", name)
		}
	}
	flat := &Report{Scenario: "chat", Traffic: &TrafficReport{SentPerSec: 5}, OK: true}
	if !flat.ok() {
		t.Error("flat out run held to a rate")
	}

	for _, c := range []struct {
		r         *Report
		want, not []string
	}{
		{paced(), []string{"latency (due->delivery)", "ack latency (due->ACK)", "send lag (due->sent)"}, []string{"send->"}},
		{flat, []string{"latency (send->delivery)", "ack latency (send->ACK)"}, []string{"due->", "send lag"}},
	} {
		var buf bytes.Buffer
		printTable(&buf, c.r)
		for _, s := range c.want {
			if !strings.Contains(buf.String(), s) {
				t.Errorf("rate %v: no %q in\n%s", c.r.Traffic.TargetRate, s, buf.String())
			}
		}
		for _, s := range c.not {
			if strings.Contains(buf.String(), s) {
				t.Errorf("rate %v: %q in\n%s", c.r.Traffic.TargetRate, s, buf.String())
			}
		}
	}
}
