package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Report is chatbench's result: the final table, or the -json object.
type Report struct {
	Scenario      string  `json:"scenario"`
	Config        Config  `json:"config"`
	ServerAssumed string  `json:"server_assumed"`
	UserCreation  string  `json:"user_creation"`
	Users         int     `json:"users"`
	FileLimit     uint64  `json:"file_limit"`
	SignupSeconds float64 `json:"signup_seconds,omitempty"`
	// UsersReused: with -bulk-db and the -prefix of an earlier run, the
	// users that existed already, with their history (a warm database).
	UsersReused  int     `json:"users_reused,omitempty"`
	SignupPerSec float64 `json:"signups_per_second,omitempty"`
	LoginSeconds float64 `json:"login_seconds,omitempty"`
	GroupSeconds float64 `json:"group_setup_seconds,omitempty"`
	// chat: users per node, as LOGIN_ACK named it (none if it did not),
	// sender-recipient pairs, and the pairs on two different nodes
	Nodes      map[string]int `json:"nodes,omitempty"`
	Pairs      int            `json:"pairs,omitempty"`
	CrossPairs int            `json:"cross_node_pairs,omitempty"`

	Traffic  *TrafficReport `json:"traffic,omitempty"`
	Connect  *ConnectReport `json:"connect,omitempty"`
	Baseline *ConnectReport `json:"baseline,omitempty"`
	// RatioToBaseline is our bytes per connection over the baseline's.
	RatioToBaseline float64        `json:"ratio_to_baseline,omitempty"`
	Login           *LoginReport   `json:"login,omitempty"`
	Resources       Resources      `json:"resources"`
	Redis           *RedisBaseline `json:"redis_baseline,omitempty"`
	Relay           *RelayBaseline `json:"relay_baseline,omitempty"`
	OK              bool           `json:"ok"` // no loss, duplicates, unanswered sends, failures; a paced run kept its rate
	Errors          []string       `json:"errors,omitempty"`
}

// TrafficReport is the chat and group result.
//
// Loss is counted per message after the drain: Lost is the (message,
// recipient) pairs of messages acked with errno 0 that the recipient never
// got; Extra the deliveries of messages not acked with errno 0 (or to a
// user who is not their recipient). Expected (acked * fan-out) is for
// information. Unanswered is sends neither acked nor answered with an
// error: sent = acked + ack errors + unanswered.
//
// Latencies are measured from each message's stamp: at a fixed -rate the
// time it was due on its sender's schedule, so the time it waited to be
// sent counts (no coordinated omission), and SendLag is how late it was
// written; flat out, the time it was written. The window holds the
// messages stamped in it.
type TrafficReport struct {
	WindowSeconds   float64        `json:"window_seconds"`
	TargetRate      float64        `json:"target_rate"` // 0 = flat out
	Fanout          int64          `json:"fanout"`
	Sent            int64          `json:"sent"`
	SendErrors      int64          `json:"send_errors"` // requests that could not be written
	DueUnsent       int64          `json:"due_unsent"`  // paced: due before the window's end, never written (not even within -drain)
	Acked           int64          `json:"acked"`
	AckErrors       int64          `json:"ack_errors"`
	RateLimited     int64          `json:"rate_limited"`
	Unanswered      int64          `json:"unanswered"`
	Delivered       int64          `json:"delivered"`
	Expected        int64          `json:"expected"`
	Lost            int64          `json:"lost"`
	Extra           int64          `json:"extra"`
	Duplicates      int64          `json:"duplicates"`
	SeqGaps         int64          `json:"seq_gaps"`        // inbox seqs skipped + group log positions a member neither got nor sent
	SeqDups         int64          `json:"seq_dups"`        // inbox seqs at or below the last + gseqs a member saw twice
	SeqReorders     int64          `json:"seq_reorders"`    // group deliveries below a gseq already delivered to that member
	GSeqDeliveries  int64          `json:"gseq_deliveries"` // deliveries checked by group log position
	OwnGSeqs        int64          `json:"own_gseqs"`       // members' own messages' gseqs, from their ACKs
	Foreign         int64          `json:"foreign"`
	Stale           int64          `json:"stale,omitempty"` // reused users: deliveries of an earlier run's messages, not counted
	ConnLost        int64          `json:"conn_lost"`
	SentPerSec      float64        `json:"sent_per_sec"` // written in the window, whenever due
	AckedPerSec     float64        `json:"acked_per_sec"`
	DeliveredPerSec float64        `json:"delivered_per_sec"`
	DrainSeconds    float64        `json:"drain_seconds"`
	DrainTimedOut   bool           `json:"drain_timed_out"` // -drain ran out with sends unanswered or messages missing
	Latency         LatencySummary `json:"latency"`
	AckLatency      LatencySummary `json:"ack_latency"`
	// SendLag is how late paced messages due in the window were written
	// (none flat out).
	SendLag *LatencySummary `json:"send_lag,omitempty"`
	// Seconds is the progress line of each second in which latencies were
	// recorded, and of the part of a second before the window ended:
	// periodic stalls show here, not in the run's percentiles. Deliveries
	// during the drain after the window are in Latency only. With
	// -procs > 1 a second holds what the child processes had reported by
	// its end (they report once a second).
	Seconds []SecondStats `json:"seconds,omitempty"`
}

// SecondStats is one second of a run: the rates in it, and the p99 and max
// of the latencies recorded in it (deliveries of messages sent in the
// window), in milliseconds.
type SecondStats struct {
	At        float64 `json:"t"` // seconds since the run phase started
	Sent      int64   `json:"sent_per_sec"`
	Acked     int64   `json:"acked_per_sec"`
	Delivered int64   `json:"delivered_per_sec"`
	Latencies int64   `json:"latencies"` // how many were recorded in it
	P99       float64 `json:"p99_ms"`
	Max       float64 `json:"max_ms"`
}

// ConnectReport is the connect result for one target.
type ConnectReport struct {
	Target          string  `json:"target"`
	Connected       int     `json:"connected"`
	Failed          int     `json:"failed"`
	ConnectSeconds  float64 `json:"connect_seconds"`
	HoldSeconds     float64 `json:"hold_seconds"`
	Dropped         int64   `json:"dropped"` // connections that ended while held
	RSSBefore       int64   `json:"rss_before_bytes"`
	RSSAfterConnect int64   `json:"rss_after_connect_bytes"`
	RSSEnd          int64   `json:"rss_end_bytes"`
	RSSPeak         int64   `json:"rss_peak_bytes"`
	BytesPerConn    float64 `json:"bytes_per_conn"`
}

// LoginReport is the login storm result.
type LoginReport struct {
	Killed         int            `json:"killed_pid,omitempty"`
	Reconnecting   int            `json:"reconnecting"`
	Back           int            `json:"back"`
	Failed         int            `json:"failed"`
	Retries        int64          `json:"retries"`
	AllBackSeconds float64        `json:"all_back_seconds"`
	Latency        LatencySummary `json:"latency"`
}

// RelayBaseline is the same chat load against chatbench's relay-server
// (-compare-baseline), measured in the same invocation.
type RelayBaseline struct {
	Traffic   *TrafficReport `json:"traffic"`
	Resources Resources      `json:"resources"`
	// DeliveredRatio is our delivered/s over the relay's; P99Ratio our
	// end-to-end p99 over the relay's.
	DeliveredRatio float64  `json:"delivered_ratio"`
	P99Ratio       float64  `json:"p99_ratio"`
	OK             bool     `json:"ok"`
	Errors         []string `json:"errors,omitempty"`
}

// RedisBaseline is redis-benchmark's PUBLISH figure.
type RedisBaseline struct {
	Command       string  `json:"command"`
	PublishPerSec float64 `json:"publish_per_sec"`
	Output        string  `json:"output"`
}

const serverAssumed = "-bcrypt-cost 4 -rate -1 (benchmark settings; chatbench cannot check them)"

// runner runs one scenario and reports progress on log.
type runner struct {
	cfg  Config
	log  io.Writer
	hs   []handle
	smp  *sampler
	ncpu int
}

func run(ctx context.Context, cfg Config, log io.Writer) (*Report, error) {
	rep := &Report{
		Scenario: cfg.Scenario, Config: cfg, ServerAssumed: serverAssumed,
		UserCreation: "SIGNUP over the protocol, " + strconv.Itoa(cfg.Concurrency) +
			" in parallel; bcrypt cost lowered by the server flag -bcrypt-cost 4 (assumed)",
		FileLimit: raiseFileLimit(),
	}
	rep.Config.ChildPassword = "" // only for the children
	if cfg.BulkDB != "" {
		rep.UserCreation = "bulk: inserted directly into " + cfg.BulkDB + " (-bulk-db), one bcrypt hash of cost 4 shared by all users; login over the protocol"
	}
	if cfg.Baseline {
		rep.ServerAssumed = "baseline-server (goroutine per connection)"
		rep.UserCreation = "none (baseline: connect and one PING per connection)"
	}
	if !cfg.Quiet {
		fmt.Fprintf(log, "chatbench: %s against %s with %d users; server assumed started with %s\n",
			cfg.Scenario, strings.Join(cfg.Addrs, ","), cfg.N, rep.ServerAssumed)
	}
	var err error
	switch cfg.Scenario {
	case "chat", "group":
		err = runTraffic(ctx, cfg, log, rep)
		if err == nil && cfg.CompareBaseline {
			err = runRelayCompare(ctx, cfg, log, rep)
		}
	case "connect":
		var c *ConnectReport
		c, err = runConnect(ctx, cfg, log, rep)
		rep.Connect = c
		if err == nil && cfg.CompareBaseline && !cfg.Baseline {
			err = runBaselineCompare(ctx, cfg, log, rep)
		}
	case "login":
		err = runLogin(ctx, cfg, log, rep)
	default:
		err = fmt.Errorf("unknown scenario %q", cfg.Scenario)
	}
	if err == nil && cfg.RedisBench != "" {
		var rerr error
		if rep.Redis, rerr = redisBenchmark(ctx, cfg.RedisBench); rerr != nil {
			rep.Errors = append(rep.Errors, rerr.Error()) // the scenario's results still count
		}
	}
	rep.OK = err == nil && rep.ok()
	return rep, err
}

func (r *Report) ok() bool {
	if t := r.Traffic; t != nil && (t.Lost != 0 || t.Extra != 0 || t.Duplicates != 0 || t.SeqGaps != 0 || t.SeqDups != 0 || t.SeqReorders != 0 ||
		t.AckErrors != 0 || t.Unanswered != 0 || t.SendErrors != 0 || t.DueUnsent != 0 || t.ConnLost != 0 || t.DrainTimedOut || t.fellBehind()) {
		return false
	}
	if c := r.Connect; c != nil && (c.Failed != 0 || c.Dropped != 0) {
		return false
	}
	if l := r.Login; l != nil && l.Failed != 0 {
		return false
	}
	if r.Relay != nil && !r.Relay.OK {
		return false // the baseline's figures would not compare
	}
	return true
}

// minRateShare is the share of -rate a paced run must send in its window:
// below it the load generator fell behind and the run did not measure the
// load asked for.
const minRateShare = 0.98

// fellBehind reports whether a paced run sent below minRateShare of its
// target rate.
func (t *TrafficReport) fellBehind() bool {
	return t.TargetRate > 0 && t.SentPerSec < minRateShare*t.TargetRate
}

func newRunner(cfg Config, log io.Writer) (*runner, error) {
	hs, err := startHandles(cfg)
	if err != nil {
		return nil, err
	}
	r := &runner{cfg: cfg, log: log, hs: hs, ncpu: runtime.NumCPU()}
	r.smp = &sampler{servers: cfg.PIDs, bench: func() []int { return benchPIDs(hs) }}
	return r, nil
}

func (r *runner) phase(ctx context.Context, name string) error {
	return runPhase(ctx, r.hs, name)
}

// finish collects the workers' results, closes their connections and fills
// the report's setup information and the resources used between snapshots
// a and b.
func (r *runner) finish(ctx context.Context, rep *Report, a, b snapshot) (WorkerResult, error) {
	res, err := collect(ctx, r.hs)
	if err != nil {
		return res, err
	}
	_ = r.phase(ctx, "close")
	r.setupInfo(rep, res)
	rep.Resources = resources(r.smp, a, b, r.ncpu)
	return res, nil
}

// setupInfo copies setup timings into the report.
func (r *runner) setupInfo(rep *Report, res WorkerResult) {
	rep.Users = res.Users
	rep.SignupSeconds, rep.UsersReused = res.SignupSeconds, res.UsersReused
	if res.SignupSeconds > 0 && !r.cfg.Baseline {
		rep.SignupPerSec = float64(res.Users-res.UsersReused) / res.SignupSeconds
	}
	rep.LoginSeconds = res.LoginSeconds
	rep.GroupSeconds = res.GroupSeconds
	rep.Nodes, rep.Pairs, rep.CrossPairs = res.Nodes, res.Pairs, res.CrossPairs
	rep.Errors = append(rep.Errors, res.Errors...)
}

// progress calls what once a second, and prints the line it returns unless
// -quiet; d holds the rates and the latencies (Latency) of the interval
// since the previous call, tot the totals. stop calls what once more for
// the interval since the last second, without printing, and returns when it
// has.
func (r *runner) progress(what func(elapsed time.Duration, d LiveStats, tot LiveStats, res Resources) string) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t0 := time.Now()
		prev := r.total()
		psnap := r.smp.snap()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			final := false
			select {
			case <-quit:
				final = true
			case <-t.C:
			}
			cur := r.total()
			snap := r.smp.snap()
			secs := max(snap.at.Sub(psnap.at).Seconds(), 1e-3)
			d := LiveStats{
				Sent:      int64(float64(cur.Sent-prev.Sent) / secs),
				Acked:     int64(float64(cur.Acked-prev.Acked) / secs),
				Delivered: int64(float64(cur.Delivered-prev.Delivered) / secs),
				Latency:   cur.Latency.Since(prev.Latency),
			}
			res := resources(r.smp, psnap, snap, r.ncpu)
			line := what(time.Since(t0), d, cur, res)
			if final {
				return
			}
			if !r.cfg.Quiet {
				fmt.Fprintf(r.log, "[%4.0fs] %s\n", time.Since(t0).Seconds(), line)
			}
			prev, psnap = cur, snap
		}
	}()
	return func() { close(quit); <-done }
}

func (r *runner) total() LiveStats {
	var t LiveStats
	for _, h := range r.hs {
		l := h.live()
		t.Sent += l.Sent
		t.Acked += l.Acked
		t.Delivered += l.Delivered
		t.Connected += l.Connected
		t.Latency.Merge(l.Latency)
	}
	return t
}

func cpuLine(res Resources) string {
	return fmt.Sprintf("cpu: server %3.0f%%  bench %3.0f%%  others %3.0f%%  (machine %3.0f%% of %d cores)",
		res.ServerCPUPercent, res.BenchCPUPercent, res.OtherCPUPercent, res.MachineBusyPct, res.MachineCPUs)
}

func connLine(_ time.Duration, _, tot LiveStats, res Resources) string {
	return fmt.Sprintf("connected %6d  server rss %s  %s", tot.Connected, mib(res.ServerRSSEndTotal), cpuLine(res))
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// onHeld, when set (by the in-process benchmarks), is called while the
// connect scenario's connections are still held, e.g. to write a heap
// profile.
var onHeld func()

// onRunPhase, when set (by the in-process benchmarks), is called as the
// run phase starts; the function it returns when the phase ends. It lets a
// CPU profile cover the measured traffic only, not the setup.
var onRunPhase func() (end func())

// runTraffic runs chat or group.
func runTraffic(ctx context.Context, cfg Config, log io.Writer, rep *Report) error {
	r, err := newRunner(cfg, log)
	if err != nil {
		return err
	}
	defer stopHandles(r.hs)
	stop := r.progress(connLine)
	err = r.phase(ctx, "setup")
	stop()
	if err != nil {
		return err
	}
	var secs []SecondStats // written by the progress goroutine until stop
	stop = r.progress(func(el time.Duration, d, tot LiveStats, res Resources) string {
		s := SecondStats{At: math.Round(el.Seconds()*10) / 10, Sent: d.Sent, Acked: d.Acked, Delivered: d.Delivered,
			Latencies: d.Latency.Total, P99: float64(d.Latency.Percentile(99)) / 1000, Max: float64(d.Latency.Max) / 1000}
		if d.Latency.Total > 0 {
			secs = append(secs, s)
		}
		return fmt.Sprintf("sent %7d/s  acked %7d/s  delivered %8d/s  last 1s: p99 %6.2fms max %6.2fms  %s",
			d.Sent, d.Acked, d.Delivered, s.P99, s.Max, cpuLine(res))
	})
	var (
		runErr error
		wg     sync.WaitGroup
		a      snapshot
	)
	endRun := func() {}
	if onRunPhase != nil {
		endRun = onRunPhase()
	}
	wg.Add(1)
	go func() { defer wg.Done(); runErr = r.phase(ctx, "run"); endRun() }()
	select {
	case <-time.After(cfg.Warmup):
	case <-ctx.Done():
	}
	a = r.smp.snap()
	wg.Wait()
	b := r.smp.snap()
	stop()
	if runErr != nil {
		return runErr
	}
	if err := r.phase(ctx, "drain"); err != nil {
		return err
	}
	res, err := r.finish(ctx, rep, a, b)
	if err != nil {
		return err
	}
	l := res.Ledger
	win := cfg.Duration.Seconds()
	t := &TrafficReport{
		WindowSeconds: win, TargetRate: cfg.Rate, Fanout: res.Fanout,
		Sent: l.Sent, SendErrors: l.SendErr, DueUnsent: l.DueUnsent, Acked: l.Acked, AckErrors: l.AckErr, RateLimited: l.Limited,
		Unanswered: max(0, l.Sent-l.Acked-l.AckErr), Delivered: l.Delivered, Expected: res.Expected,
		Lost: res.Lost, Extra: res.Extra,
		Duplicates: l.Dups, SeqGaps: l.SeqGaps + l.GSeqHoles, SeqDups: l.SeqDups, SeqReorders: l.Reorders,
		GSeqDeliveries: l.GSeqChecked, OwnGSeqs: l.OwnGSeqs, Foreign: l.Foreign, Stale: l.Stale, ConnLost: l.ConnLost,
		SentPerSec: float64(l.SentWin) / win, AckedPerSec: float64(l.AckedWin) / win,
		DeliveredPerSec: float64(l.DeliveredWin) / win, DrainSeconds: res.DrainSeconds, DrainTimedOut: res.DrainTimedOut,
		Latency: l.Latency.Summary(), AckLatency: l.AckLatency.Summary(), Seconds: secs,
	}
	if cfg.Rate > 0 {
		lag := l.SendLag.Summary()
		t.SendLag = &lag
	}
	rep.Traffic = t
	if l.Limited > 0 {
		rep.Errors = append(rep.Errors, fmt.Sprintf("%d sends were rate limited (errno 8): start chatserver with -rate -1", l.Limited))
	}
	if t.DrainTimedOut {
		rep.Errors = append(rep.Errors, fmt.Sprintf("drain timed out after %v (-drain): %d sends unanswered, %d acked deliveries missing",
			cfg.Drain, t.Unanswered, t.Lost))
	}
	if t.fellBehind() {
		rep.Errors = append(rep.Errors, fmt.Sprintf("sent %.0f/s, below %.0f %% of -rate %.0f: the load generator fell behind",
			t.SentPerSec, minRateShare*100, t.TargetRate))
	}
	if t.DueUnsent > 0 {
		rep.Errors = append(rep.Errors, fmt.Sprintf("%d messages due in the window were never sent, not even within -drain (%v) after it: the senders were held up",
			t.DueUnsent, cfg.Drain))
	}
	return nil
}

// runConnect opens and holds cfg.N idle connections and measures the
// server's RSS per connection.
func runConnect(ctx context.Context, cfg Config, log io.Writer, rep *Report) (*ConnectReport, error) {
	if len(cfg.PIDs) == 0 && !cfg.Quiet {
		fmt.Fprintln(log, "chatbench: no -pid given: server RSS per connection cannot be measured")
	}
	r, err := newRunner(cfg, log)
	if err != nil {
		return nil, err
	}
	defer stopHandles(r.hs)
	if err := r.phase(ctx, "signup"); err != nil {
		return nil, err
	}
	// Let the sign-up connections close and the server settle.
	sleepCtx(ctx, 2*time.Second)
	before := r.smp.snap()
	stop := r.progress(connLine)
	t0 := time.Now()
	err = r.phase(ctx, "connect")
	connectSecs := time.Since(t0).Seconds()
	if err != nil {
		stop()
		return nil, err
	}
	afterConnect := r.smp.snap()
	peak := rssTotal(afterConnect)
	hold0 := time.Now()
	for time.Since(hold0) < cfg.Duration && ctx.Err() == nil {
		sleepCtx(ctx, min(time.Second, cfg.Duration-time.Since(hold0)))
		peak = max(peak, rssTotal(r.smp.snap()))
	}
	end := r.smp.snap()
	stop()
	if onHeld != nil {
		onHeld()
	}
	res, err := r.finish(ctx, rep, before, end)
	if err != nil {
		return nil, err
	}
	c := &ConnectReport{
		Target: strings.Join(cfg.Addrs, ","), Connected: res.Connected, Failed: res.ConnFailed,
		ConnectSeconds: connectSecs, HoldSeconds: end.at.Sub(hold0).Seconds(),
		Dropped:   int64(res.Dropped),
		RSSBefore: rssTotal(before), RSSAfterConnect: rssTotal(afterConnect), RSSEnd: rssTotal(end), RSSPeak: peak,
	}
	if res.Connected > 0 && c.RSSBefore > 0 {
		c.BytesPerConn = float64(c.RSSEnd-c.RSSBefore) / float64(res.Connected)
	}
	return c, nil
}

func rssTotal(s snapshot) int64 {
	var t int64
	for _, p := range s.servers {
		t += p.rss
	}
	return t
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
}

// startBaselineServer starts chatbench's subcommand sub (a baseline server,
// described as what on log unless quiet) on a free loopback port and
// returns its address and process; stop kills it.
func startBaselineServer(sub, what string, quiet bool, log io.Writer) (addr string, pid int, stop func(), err error) {
	cmd, err := selfCommand(sub, "-listen", "127.0.0.1:0")
	if err != nil {
		return "", 0, nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", 0, nil, err
	}
	if err := cmd.Start(); err != nil {
		return "", 0, nil, err
	}
	stop = func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
	line, err := bufio.NewReader(out).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening ")
	if err != nil || !ok {
		stop()
		return "", 0, nil, fmt.Errorf("%s did not start: %q %v", sub, line, err)
	}
	if !quiet {
		fmt.Fprintf(log, "chatbench: %s pid %d on %s\n", what, cmd.Process.Pid, addr)
	}
	return addr, cmd.Process.Pid, stop, nil
}

// runBaselineCompare starts the goroutine-per-connection baseline server
// and measures it exactly like the chat server.
func runBaselineCompare(ctx context.Context, cfg Config, log io.Writer, rep *Report) error {
	addr, pid, stop, err := startBaselineServer("baseline-server", "baseline server (goroutine per connection)", cfg.Quiet, log)
	if err != nil {
		return err
	}
	defer stop()
	bcfg := cfg
	bcfg.Baseline, bcfg.Addrs, bcfg.PIDs = true, []string{addr}, []int{pid}
	var brep Report
	b, err := runConnect(ctx, bcfg, log, &brep)
	if err != nil {
		return fmt.Errorf("baseline: %w", err)
	}
	rep.Baseline = b
	if b.BytesPerConn > 0 && rep.Connect != nil {
		rep.RatioToBaseline = rep.Connect.BytesPerConn / b.BytesPerConn
	}
	return nil
}

// runRelayCompare runs the chat load of cfg once more against a
// relay-server it starts: every user on the relay (it is one process, so
// -addr-recv does not apply), created with SIGNUP, the same -rate, window,
// message size and number of senders (with -cross-node, the pairs our run
// made). Our figures over the relay's go into rep.Relay.
func runRelayCompare(ctx context.Context, cfg Config, log io.Writer, rep *Report) error {
	addr, pid, stop, err := startBaselineServer("relay-server", "relay baseline (goroutine per connection, nothing stored)", cfg.Quiet, log)
	if err != nil {
		return err
	}
	defer stop()
	bcfg := cfg
	bcfg.Addrs, bcfg.RecvAddrs, bcfg.PIDs = []string{addr}, nil, []int{pid}
	bcfg.BulkDB, bcfg.RedisBench, bcfg.CompareBaseline, bcfg.CrossNode = "", "", false, false
	if cfg.CrossNode && rep.Pairs > 0 {
		bcfg.N = 2 * rep.Pairs // as many senders as our run had pairs across nodes
	}
	var brep Report
	if err := runTraffic(ctx, bcfg, log, &brep); err != nil {
		return fmt.Errorf("relay baseline: %w", err)
	}
	rb := &RelayBaseline{Traffic: brep.Traffic, Resources: brep.Resources, OK: brep.ok(), Errors: brep.Errors}
	if t, b := rep.Traffic, brep.Traffic; t != nil && b != nil {
		if b.DeliveredPerSec > 0 {
			rb.DeliveredRatio = t.DeliveredPerSec / b.DeliveredPerSec
		}
		if b.Latency.P99 > 0 {
			rb.P99Ratio = t.Latency.P99 / b.Latency.P99
		}
	}
	rep.Relay = rb
	return nil
}

// runLogin runs the token-login storm.
func runLogin(ctx context.Context, cfg Config, log io.Writer, rep *Report) error {
	r, err := newRunner(cfg, log)
	if err != nil {
		return err
	}
	defer stopHandles(r.hs)
	stop := r.progress(connLine)
	err = r.phase(ctx, "setup")
	if err != nil {
		stop()
		return err
	}
	a := r.smp.snap()
	if cfg.KillPID > 0 {
		if !cfg.Quiet {
			fmt.Fprintf(log, "chatbench: SIGKILL to node pid %d\n", cfg.KillPID)
		}
		if err := syscall.Kill(cfg.KillPID, syscall.SIGKILL); err != nil {
			stop()
			return fmt.Errorf("kill %d: %w", cfg.KillPID, err)
		}
	}
	err = r.phase(ctx, "storm")
	b := r.smp.snap()
	stop()
	if err != nil {
		return err
	}
	res, err := r.finish(ctx, rep, a, b)
	if err != nil {
		return err
	}
	rep.Login = &LoginReport{
		Killed: cfg.KillPID, Reconnecting: res.Stormed, Back: res.Back, Failed: res.StormFailed,
		Retries: res.Retries, AllBackSeconds: float64(res.AllBackNanos) / 1e9, Latency: res.Reconnect.Summary(),
	}
	return nil
}

// redisBenchmark measures Redis PUBLISH throughput at addr with
// redis-benchmark: an explicit PUBLISH command with a 200-byte payload (about
// one delivery notice), because redis-benchmark 7 has no built-in "publish"
// test (-t publish runs nothing).
func redisBenchmark(ctx context.Context, addr string) (*RedisBaseline, error) {
	host, port, ok := strings.Cut(addr, ":")
	if !ok {
		return nil, fmt.Errorf("-redis-bench %q: want host:port", addr)
	}
	args := []string{"-h", host, "-p", port, "-n", "200000", "-q", "publish", "chatbench:baseline", strings.Repeat("x", 200)}
	out, err := exec.CommandContext(ctx, "redis-benchmark", args...).CombinedOutput()
	rb := &RedisBaseline{
		Command: "redis-benchmark " + strings.Join(args[:len(args)-1], " ") + " <200 bytes>",
		Output:  lastLine(string(out)),
	}
	if err != nil {
		return rb, fmt.Errorf("redis-benchmark: %w: %s", err, out)
	}
	// "publish chatbench:baseline xxx...: 41893.59 requests per second, p50=0.559 msec"
	if m := rpsRe.FindStringSubmatch(rb.Output); m != nil {
		rb.PublishPerSec, _ = strconv.ParseFloat(m[1], 64)
	}
	rb.Output = strings.Replace(rb.Output, args[len(args)-1], "<200 bytes>", 1)
	if rb.PublishPerSec == 0 {
		return rb, errors.New("redis-benchmark: no requests-per-second figure in its output")
	}
	return rb, nil
}

var rpsRe = regexp.MustCompile(`([0-9.]+) requests per second`)

func lastLine(s string) string {
	s = strings.TrimSpace(strings.ReplaceAll(s, "\r", "\n"))
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
