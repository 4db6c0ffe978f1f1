package main

import (
	"log/slog"
	"runtime"
	"strconv"
)

// maxProcs is the GOMAXPROCS a node runs with: the runtime's default (the
// CPUs it may use), raised to one more than the gnet event loops. An
// event loop waits for its sockets in epoll_wait on its own thread, and a
// goroutine in a system call keeps its P until sysmon takes it back; an
// idle sysmon looks only every 10 ms. With one event loop per CPU and as
// many Ps, the loops could hold every P while the answers from MariaDB and
// Redis waited in the runtime's own poller for that look: every round
// trip took up to 10 ms more, and a node at 1,000 msg/s fell into
// stretches where it did (cluster p99 53–65 ms with 2 Ps and 2 loops on 2
// CPUs, 17–23 ms with a P more or a loop less). One P more is enough; a P
// per loop more made the nodes slower flat out, with more threads running
// than CPUs (BENCHMARKS.md (c)). An explicit GOMAXPROCS in the environment
// wins.
func maxProcs(env string, defaultProcs, eventLoops int) int {
	if n, err := strconv.Atoi(env); err == nil && n > 0 {
		return n
	}
	if eventLoops <= 0 {
		eventLoops = runtime.NumCPU() // the server's default
	}
	return max(defaultProcs, eventLoops+1)
}

// setMaxProcs applies maxProcs.
func setMaxProcs(getenv func(string) string, eventLoops int, log *slog.Logger) {
	n := maxProcs(getenv("GOMAXPROCS"), runtime.GOMAXPROCS(0), eventLoops)
	if n != runtime.GOMAXPROCS(0) {
		runtime.GOMAXPROCS(n)
	}
	log.Debug("GOMAXPROCS", "procs", n)
}
