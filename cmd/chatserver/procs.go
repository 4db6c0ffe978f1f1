package main

import (
	"log/slog"
	"runtime"
	"strconv"

	"github.com/chatcluster/chatcluster/server"
)

// maxProcs is the GOMAXPROCS a node runs with: the runtime's default (the
// CPUs it may use), raised to one more than the gnet event loops if they
// are that many. An event loop waits in epoll_wait on its own thread and
// keeps its P while it waits (server.DefaultEventLoops); with no P left,
// the answers from MariaDB and Redis waited up to 10 ms to be noticed. By
// default there is a loop fewer than CPUs and this changes nothing; it
// matters when -event-loops asks for as many loops as CPUs or more. (A P
// more than the CPUs on every node, with a loop per CPU, made the cluster
// 7-17 % slower flat out: BENCHMARKS.md (c).) An explicit GOMAXPROCS in
// the environment wins.
func maxProcs(env string, defaultProcs, eventLoops int) int {
	if n, err := strconv.Atoi(env); err == nil && n > 0 {
		return n
	}
	if eventLoops <= 0 {
		eventLoops = server.DefaultEventLoops()
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
