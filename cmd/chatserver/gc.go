package main

import (
	"log/slog"
	"math"
	"runtime/debug"
	"syscall"
)

// defaultGCPercent is the GOGC a node runs with unless the environment sets
// one. A node's live heap is small (tens of MiB: sessions, queues, the
// frames in flight) and it allocates fast (a request, its decoding, the
// commit's rows and deliveries), so at Go's default of 100 it collects many
// times a second under load, and the collector's share of two cores sat in
// front of the group-commit writer and the event loop. At 400 it collects a
// fifth as often: one SQLite node flat out delivered 42,753 msg/s instead
// of 37,740, and p99 at 17,000 msg/s was 165 ms instead of 225, for ~80 MiB
// more resident at peak (BENCHMARKS.md, "Changes in session 7").
const defaultGCPercent = 400

// gcSettings is the GOGC and the soft memory limit a node runs with. An
// explicit GOGC (any value, "off" included) or GOMEMLIMIT in the
// environment wins: the runtime has applied it already, and the result
// says to leave it (percent < 0 or limit < 0). Otherwise GOGC is
// defaultGCPercent and the memory limit half the machine's RAM (ramBytes),
// so that the heap a higher GOGC allows can never crowd the machine: near
// the limit the runtime collects as often as it must. ramBytes 0 (unknown)
// sets no limit.
func gcSettings(getenv func(string) string, ramBytes uint64) (percent int, limit int64) {
	percent, limit = defaultGCPercent, -1
	if getenv("GOGC") != "" {
		percent = -1
	}
	if getenv("GOMEMLIMIT") == "" && ramBytes > 0 {
		limit = int64(min(ramBytes/2, math.MaxInt64))
	}
	return percent, limit
}

// setGC applies gcSettings.
func setGC(getenv func(string) string, log *slog.Logger) {
	var ram uint64
	var si syscall.Sysinfo_t
	if syscall.Sysinfo(&si) == nil {
		ram = uint64(si.Totalram) * uint64(si.Unit)
	}
	percent, limit := gcSettings(getenv, ram)
	if percent >= 0 {
		debug.SetGCPercent(percent)
	}
	if limit >= 0 {
		debug.SetMemoryLimit(limit)
	}
	log.Debug("garbage collector", "gc_percent", percent, "memory_limit", limit)
}
