package main

import (
	"log/slog"
	"runtime"
	"strconv"
	"strings"

	"github.com/chatcluster/chatcluster/server"
)

// maxProcs is the GOMAXPROCS a node runs with: the runtime's default (the
// CPUs it may use), raised to one more than the gnet event loops
// (eventLoops, resolved: at least 1) if they are that many, and on SQLite
// to two more. An explicit GOMAXPROCS in the environment wins.
//
// An event loop waits in epoll_wait on its own thread and keeps its P while
// it waits (server.DefaultEventLoops); with no P left, the answers from
// MariaDB and Redis waited up to 10 ms to be noticed. By default there is a
// loop fewer than CPUs and that rule changes nothing; it matters when
// -event-loops asks for as many loops as CPUs or more. (A P more than the
// CPUs on every node, with a loop per CPU, made the cluster 7-17 % slower
// flat out: docs/BENCHMARKS-history.md.)
//
// The SQLite writer runs its commits on a thread of its own, in C, and
// holds a P between its calls into C, so it needs one beside the loops'. A
// goroutine it wakes (the post-commit goroutine, which sends a commit's
// ACKs and deliveries) goes to that P's queue, and with the event loop
// holding the other P it waited there until the writer's commit ended or
// sysmon took the P back: 10-19 ms while the logs were copied. With a P
// more it runs at once: at 26,020 msg/s p99 fell from 42.5 to 34.5 ms with
// 2,000 users (medians of 6 pairs) and from 9-10 to 4-5 ms with 20, and
// flat out did not change. On the MySQL nodes (no writer in C) a P more
// made 6b worse (docs/BENCHMARKS-history.md, "Changes in session 14").
func maxProcs(env string, defaultProcs, eventLoops int, sqlite bool) int {
	if n, err := strconv.Atoi(env); err == nil && n > 0 {
		return n
	}
	n := eventLoops + 1
	if sqlite {
		n++
	}
	return max(defaultProcs, n)
}

// setMaxProcs applies maxProcs and returns the event loops the node runs:
// eventLoops, or if that is 0 or less server.DefaultEventLoops() as it is
// before GOMAXPROCS changes (afterwards it would count the added Ps).
// Setting GOMAXPROCS turns off the runtime's own updates of it when a
// container's CPU limit changes; the event loops are fixed at start-up
// anyway.
func setMaxProcs(getenv func(string) string, eventLoops int, db string, log *slog.Logger) int {
	if eventLoops <= 0 {
		eventLoops = server.DefaultEventLoops()
	}
	n := maxProcs(getenv("GOMAXPROCS"), runtime.GOMAXPROCS(0), eventLoops, strings.HasPrefix(db, "sqlite:"))
	if n != runtime.GOMAXPROCS(0) {
		runtime.GOMAXPROCS(n)
	}
	log.Debug("GOMAXPROCS", "procs", n, "event_loops", eventLoops)
	return eventLoops
}
