package server

import (
	"log/slog"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// memReleaser gives the memory freed by a burst of work back to the
// operating system once the process has been quiet for a while.
//
// The Go runtime returns free heap memory on its own, but only down to about
// 10 % above the heap that was in use at the end of the last collection. The
// collection that ends a burst (a login storm, say) still counts the burst's
// garbage as in use, so up to twice the live heap stays resident until the
// next collection, and a quiet server runs its next one only when the runtime
// forces it, two minutes later. A server that holds many idle connections is
// limited by memory, so it collects and releases as soon as it is quiet: one
// collection per quiet period after work, never while busy.
//
// Quiet means: no collection ran and less than quietRate was allocated
// during the last idle period, and at least one collection ran since the
// last release (otherwise there is nothing new to give back).
type memReleaser struct {
	idle    time.Duration
	log     *slog.Logger
	samples []metrics.Sample

	quietSince  time.Time
	quietAllocs uint64 // heap bytes allocated, ever, at quietSince
	cycles      uint64 // collections, ever, at the last tick
	released    uint64 // collections, ever, right after the last release
}

// quietRate is the allocation rate, in bytes per second, below which the
// process counts as quiet. Idle connections allocate next to nothing; a
// single chat request allocates a few KiB.
const quietRate = 1 << 20

func newMemReleaser(idle time.Duration, log *slog.Logger) *memReleaser {
	m := &memReleaser{idle: idle, log: log, samples: []metrics.Sample{
		{Name: "/gc/cycles/total:gc-cycles"},
		{Name: "/gc/heap/allocs:bytes"},
	}}
	m.reset(time.Now())
	m.released = m.cycles // what start-up left behind is not a burst
	return m
}

// reset starts a quiet period at now.
func (m *memReleaser) reset(now time.Time) {
	metrics.Read(m.samples)
	m.cycles, m.quietAllocs, m.quietSince = m.read(0), m.read(1), now
}

func (m *memReleaser) read(i int) uint64 {
	if m.samples[i].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return m.samples[i].Value.Uint64()
}

// tick is called periodically (at least once per second) by the sweeper.
func (m *memReleaser) tick(now time.Time) {
	metrics.Read(m.samples)
	cycles, allocs := m.read(0), m.read(1)
	quiet := now.Sub(m.quietSince)
	if cycles != m.cycles || allocs-m.quietAllocs > uint64(quiet.Seconds()*quietRate)+quietRate {
		m.cycles, m.quietAllocs, m.quietSince = cycles, allocs, now
		return
	}
	if cycles == m.released || quiet < m.idle {
		return
	}
	start := time.Now()
	debug.FreeOSMemory()
	m.reset(time.Now())
	m.released = m.cycles
	m.log.Debug("returned free memory to the operating system", "quiet", quiet.Round(time.Second), "took", time.Since(start))
}
