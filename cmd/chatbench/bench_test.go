package main

import (
	"context"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"
)

// The in-process benchmarks run a chatbench scenario against a chat server
// in the same process, so that `go test -cpuprofile` profiles the server
// (the binary has no pprof endpoint). The profile also holds chatbench's own
// work: look at the server packages (server, service, store, gnet, sqlite).
//
//	CHATBENCH_PROFILE=/tmp/chat.prof go test -run '^$' -bench ChatInProcess -benchtime 1x ./cmd/chatbench
//	go tool pprof -top /tmp/chat.prof
//
// CHATBENCH_PROFILE profiles only the measured traffic (warm-up and window),
// not the user setup; go test -cpuprofile would include the logins' bcrypt.
// CHATBENCH_N (users, default 2000), CHATBENCH_DURATION (default 5s) and
// CHATBENCH_RATE (default 0, flat out) adjust the load.
func BenchmarkChatInProcess(b *testing.B)  { benchInProcess(b, "chat") }
func BenchmarkGroupInProcess(b *testing.B) { benchInProcess(b, "group") }

func benchInProcess(b *testing.B, scenario string) {
	if path := os.Getenv("CHATBENCH_PROFILE"); path != "" {
		onRunPhase = func() func() {
			f, err := os.Create(path)
			if err != nil {
				b.Fatal(err)
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				b.Fatal(err)
			}
			return func() { pprof.StopCPUProfile(); f.Close() }
		}
		defer func() { onRunPhase = nil }()
	}
	n := envInt("CHATBENCH_N", 2000)
	dur := 5 * time.Second
	if v, err := time.ParseDuration(os.Getenv("CHATBENCH_DURATION")); err == nil {
		dur = v
	}
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		ts := startServer(b)
		cfg := testConfig(scenario, ts.addr, n)
		cfg.Duration, cfg.Warmup = dur, time.Second
		cfg.GroupSize, cfg.Groups = 100, n/100
		cfg.Inflight, cfg.Concurrency = 8, 64
		cfg.Size = 100
		cfg.Rate = float64(envInt("CHATBENCH_RATE", 0))
		cfg.BulkDB = ts.db
		b.StartTimer()
		rep, err := run(context.Background(), cfg, os.Stderr)
		if err != nil {
			b.Fatal(err)
		}
		tr := rep.Traffic
		b.ReportMetric(tr.DeliveredPerSec, "delivered/s")
		b.ReportMetric(tr.Latency.P99, "p99_ms")
		b.ReportMetric(float64(tr.Lost+tr.Duplicates), "lost+dups")
	}
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

// BenchmarkConnectInProcess holds CHATBENCH_N (default 5000) idle logged-in
// connections to an in-process server; with CHATBENCH_HEAPPROFILE it writes
// a heap profile while they are held (after a GC). Filter the server's share
// with go tool pprof -sample_index=inuse_space -focus 'server|service|gnet'.
func BenchmarkConnectInProcess(b *testing.B) {
	n := envInt("CHATBENCH_N", 5000)
	if path := os.Getenv("CHATBENCH_HEAPPROFILE"); path != "" {
		onHeld = func() {
			runtime.GC()
			f, err := os.Create(path)
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			if err := pprof.WriteHeapProfile(f); err != nil {
				b.Fatal(err)
			}
		}
		defer func() { onHeld = nil }()
	}
	for i := 0; i < b.N; i++ {
		ts := startServer(b)
		cfg := testConfig("connect", ts.addr, n)
		cfg.Duration, cfg.Concurrency, cfg.BulkDB = 2*time.Second, 64, ts.db
		rep, err := run(context.Background(), cfg, os.Stderr)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(rep.Connect.BytesPerConn, "rss_bytes/conn")
	}
}
