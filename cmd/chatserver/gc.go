package main

import (
	"log/slog"
	"math"
	"os"
	"path"
	"runtime/debug"
	"strconv"
	"strings"
)

// defaultGCPercent is the GOGC a node runs with unless the environment sets
// one. A node's live heap is small (tens of MiB: sessions, queues, the
// frames in flight) and it allocates fast (a request, its decoding, the
// commit's rows and deliveries), so at Go's default of 100 it collects many
// times a second under load, and the collector's share of two cores sat in
// front of the group-commit writer and the event loop. At 400 it collects a
// fifth as often: one SQLite node flat out delivered 42,753 msg/s instead
// of 37,740, and p99 at 17,000 msg/s was 165 ms instead of 225, for ~80 MiB
// more resident at peak (docs/BENCHMARKS-history.md, "Changes in session
// 7").
const defaultGCPercent = 400

// gcSettings is the GOGC and the soft memory limit a node runs with. An
// explicit GOGC (any value, "off" included) or GOMEMLIMIT in the
// environment wins over its own default, each on its own: the runtime has
// applied it already, and the result says to leave it (percent < 0 or
// limit < 0). Otherwise GOGC is defaultGCPercent and the memory limit half
// the memory the node may use (memBytes: the RAM, or its cgroup's limit if
// lower), so that the heap a higher GOGC allows does not crowd it out:
// near the limit the runtime collects as often as it must. memBytes 0
// (unknown) sets no limit.
func gcSettings(getenv func(string) string, memBytes uint64) (percent int, limit int64) {
	percent, limit = defaultGCPercent, -1
	if getenv("GOGC") != "" {
		percent = -1
	}
	if getenv("GOMEMLIMIT") == "" && memBytes > 0 {
		limit = int64(min(memBytes/2, math.MaxInt64))
	}
	return percent, limit
}

// setGC applies gcSettings.
func setGC(getenv func(string) string, log *slog.Logger) {
	mem := totalRAM()
	if lim, ok := cgroupLimit(os.ReadFile); ok && (mem == 0 || lim < mem) {
		mem = lim
	}
	percent, limit := gcSettings(getenv, mem)
	if percent >= 0 {
		debug.SetGCPercent(percent)
	}
	if limit >= 0 {
		debug.SetMemoryLimit(limit)
	}
	log.Debug("garbage collector", "gc_percent", percent, "memory_limit", limit)
}

// cgroupLimit is the lowest memory limit of this process's cgroup (v2:
// memory.max of its cgroup and each parent) or, on cgroup v1, its
// memory.limit_in_bytes; false if there is none or it cannot be read.
func cgroupLimit(readFile func(string) ([]byte, error)) (uint64, bool) {
	var (
		best  uint64
		found bool
	)
	take := func(file string) {
		b, err := readFile(file)
		if err != nil {
			return
		}
		v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if err != nil { // "max": no limit here
			return
		}
		if !found || v < best {
			best, found = v, true
		}
	}
	if b, err := readFile("/proc/self/cgroup"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if dir, ok := strings.CutPrefix(line, "0::"); ok {
				for dir = path.Clean("/" + dir); ; dir = path.Dir(dir) {
					take(path.Join("/sys/fs/cgroup", dir, "memory.max"))
					if dir == "/" {
						break
					}
				}
			}
		}
	}
	take("/sys/fs/cgroup/memory/memory.limit_in_bytes")
	return best, found
}
