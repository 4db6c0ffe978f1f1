package main

import (
	"log/slog"
	"runtime"
	"strconv"
)

// maxProcs is the GOMAXPROCS a node runs with: the runtime's default
// (the CPUs it may use) plus one P for each goroutine that waits in a
// blocking system call of its own, gnet's event loops and its main
// reactor (epoll_wait on their own threads). A goroutine in a system call
// keeps its P until sysmon takes it back, and an idle sysmon looks only
// every 10 ms; with as many Ps as CPUs, the event loops could hold all of
// them while MariaDB's or Redis's answers waited in the runtime's own
// poller for that look, so every round trip took up to 10 ms more (on 2
// CPUs, p99 at 1,000 msg/s across two nodes 53–63 ms with 2 Ps, 16–21 ms
// with 5: BENCHMARKS.md (c)). An explicit GOMAXPROCS in the environment
// wins.
func maxProcs(env string, defaultProcs, eventLoops int) int {
	if n, err := strconv.Atoi(env); err == nil && n > 0 {
		return n
	}
	if eventLoops <= 0 {
		eventLoops = runtime.NumCPU() // the server's default
	}
	return defaultProcs + eventLoops + 1
}

// setMaxProcs applies maxProcs.
func setMaxProcs(getenv func(string) string, eventLoops int, log *slog.Logger) {
	n := maxProcs(getenv("GOMAXPROCS"), runtime.GOMAXPROCS(0), eventLoops)
	if n != runtime.GOMAXPROCS(0) {
		runtime.GOMAXPROCS(n)
	}
	log.Debug("GOMAXPROCS", "procs", n)
}
