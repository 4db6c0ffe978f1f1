package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// raiseFileLimit lifts the soft open-file limit to the hard limit and
// returns the result.
func raiseFileLimit() uint64 {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
		_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l)
	}
	return l.Cur
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100

// procSample is one reading of /proc/PID.
type procSample struct {
	ok    bool
	name  string
	ticks uint64 // utime + stime
	rss   int64  // bytes
}

// readProc reads CPU time from /proc/PID/stat and VmRSS from
// /proc/PID/status.
func readProc(pid int) procSample {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procSample{}
	}
	// The command name is in parentheses and may contain spaces.
	open, close := bytes.IndexByte(stat, '('), bytes.LastIndexByte(stat, ')')
	if open < 0 || close < open {
		return procSample{}
	}
	s := procSample{name: string(stat[open+1 : close])}
	fields := strings.Fields(string(stat[close+1:]))
	// fields[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(fields) < 13 {
		return procSample{}
	}
	ut, _ := strconv.ParseUint(fields[11], 10, 64)
	st, _ := strconv.ParseUint(fields[12], 10, 64)
	s.ticks = ut + st
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procSample{}
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) >= 1 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				s.rss = kb * 1024
			}
		}
	}
	s.ok = true
	return s
}

// machineSample reads the aggregate line of /proc/stat: busy and total
// jiffies over all CPUs.
func machineSample() (busy, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0
	}
	for i, s := range f[1:] {
		v, _ := strconv.ParseUint(s, 10, 64)
		if i >= 8 { // guest time is already counted in user
			break
		}
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
}

// snapshot is a reading of every watched process and the machine.
type snapshot struct {
	at           time.Time
	servers      []procSample
	bench        []procSample
	busy, totalJ uint64
}

// sampler watches the server processes (-pid) and chatbench's own.
type sampler struct {
	servers []int
	bench   func() []int
}

func (s *sampler) snap() snapshot {
	sn := snapshot{at: time.Now()}
	for _, pid := range s.servers {
		sn.servers = append(sn.servers, readProc(pid))
	}
	for _, pid := range s.bench() {
		sn.bench = append(sn.bench, readProc(pid))
	}
	sn.busy, sn.totalJ = machineSample()
	return sn
}

// ProcStat is one process's resource use over a window.
type ProcStat struct {
	PID        int     `json:"pid"`
	Name       string  `json:"name"`
	CPUPercent float64 `json:"cpu_percent"` // 100 = one core
	RSSStart   int64   `json:"rss_start_bytes"`
	RSSEnd     int64   `json:"rss_end_bytes"`
	RSSPeak    int64   `json:"rss_peak_bytes,omitempty"`
}

// Resources is the resource use over the measurement window.
type Resources struct {
	Servers          []ProcStat `json:"servers"`
	ServerCPUPercent float64    `json:"server_cpu_percent"`
	BenchCPUPercent  float64    `json:"bench_cpu_percent"`
	MachineBusyPct   float64    `json:"machine_busy_percent"` // of all cores
	// OtherCPUPercent is CPU used by everything else on the machine (100 =
	// one core): on a shared machine, the noise in this run.
	OtherCPUPercent   float64 `json:"other_cpu_percent"`
	MachineCPUs       int     `json:"machine_cpus"`
	WindowSeconds     float64 `json:"window_seconds"`
	ServerRSSEndTotal int64   `json:"server_rss_end_bytes"`
}

func cpuPct(a, b procSample, secs float64) float64 {
	if !a.ok || !b.ok || secs <= 0 || b.ticks < a.ticks {
		return 0
	}
	return float64(b.ticks-a.ticks) / clockTicks / secs * 100
}

// resources compares two snapshots taken by the same sampler.
func resources(s *sampler, a, b snapshot, ncpu int) Resources {
	secs := b.at.Sub(a.at).Seconds()
	r := Resources{WindowSeconds: secs, MachineCPUs: ncpu}
	for i, pid := range s.servers {
		if i >= len(a.servers) || i >= len(b.servers) {
			break
		}
		ps := ProcStat{PID: pid, Name: b.servers[i].name, CPUPercent: cpuPct(a.servers[i], b.servers[i], secs),
			RSSStart: a.servers[i].rss, RSSEnd: b.servers[i].rss}
		r.Servers = append(r.Servers, ps)
		r.ServerCPUPercent += ps.CPUPercent
		r.ServerRSSEndTotal += ps.RSSEnd
	}
	// Bench processes are matched by position; children exist for the
	// whole run.
	for i := range min(len(a.bench), len(b.bench)) {
		r.BenchCPUPercent += cpuPct(a.bench[i], b.bench[i], secs)
	}
	if b.totalJ > a.totalJ {
		r.MachineBusyPct = float64(b.busy-a.busy) / float64(b.totalJ-a.totalJ) * 100
		r.OtherCPUPercent = max(0, r.MachineBusyPct*float64(ncpu)-r.ServerCPUPercent-r.BenchCPUPercent)
	}
	return r
}
