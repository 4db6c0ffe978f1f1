package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/conf"
	"github.com/chatcluster/chatcluster/server"
)

// TestMain lets the test binary stand in for chatbench when it re-executes
// itself (-procs children, the baseline server).
func TestMain(m *testing.M) {
	if os.Getenv(envSelfExec) == "1" || os.Getenv(envChildConfig) != "" {
		os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

type testServer struct {
	addr, db string
}

// startServer runs a chat server in this process with benchmark settings.
func startServer(t testing.TB) testServer {
	t.Helper()
	cfg := conf.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.DB = "sqlite:" + filepath.Join(t.TempDir(), "chat.db")
	cfg.BcryptCost = 4
	cfg.Rate = -1
	cfg.LogLevel = "warn"
	app, err := server.Open(context.Background(), cfg, cfg.Logger(os.Stderr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := app.Close(ctx); err != nil {
			t.Errorf("stop server: %v", err)
		}
	})
	return testServer{addr: app.Server.Addr(), db: cfg.DB}
}

var prefixes atomic.Int64

func testConfig(scenario, addr string, n int) Config {
	return Config{
		Scenario: scenario, Addrs: []string{addr}, N: n,
		Duration: time.Second, Warmup: 200 * time.Millisecond, Drain: 10 * time.Second,
		Size: 60, GroupSize: 5, SendersPerGroup: 1, Inflight: 4,
		PIDs: []int{os.Getpid()}, SourceIPs: 1, Procs: 1,
		Prefix:        fmt.Sprintf("t%d-%d-", time.Now().UnixNano()%1e6, prefixes.Add(1)),
		ChildPassword: "benchpass", AckInterval: 50 * time.Millisecond, ClientMsgID: true,
		Concurrency: 8, Timeout: 15 * time.Second, Quiet: true,
	}
}

func runOK(t *testing.T, cfg Config) *Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := run(ctx, cfg, testLog{t})
	if err != nil {
		t.Fatalf("run %s: %v", cfg.Scenario, err)
	}
	var buf bytes.Buffer
	printTable(&buf, rep)
	t.Logf("\n%s", buf.String())
	if _, err := json.Marshal(rep); err != nil {
		t.Fatal(err)
	}
	return rep
}

type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Logf("%s", bytes.TrimRight(p, "\n"))
	return len(p), nil
}

func checkTraffic(t *testing.T, rep *Report, fanout int64) {
	t.Helper()
	tr := rep.Traffic
	if tr == nil {
		t.Fatal("no traffic report")
	}
	if tr.Sent == 0 || tr.Acked != tr.Sent || tr.AckErrors != 0 || tr.Unanswered != 0 || tr.SendErrors != 0 || tr.DrainTimedOut {
		t.Errorf("sent %d acked %d errors %d unanswered %d send errors %d drain timed out %v",
			tr.Sent, tr.Acked, tr.AckErrors, tr.Unanswered, tr.SendErrors, tr.DrainTimedOut)
	}
	if tr.Fanout != fanout || tr.Expected != tr.Acked*fanout {
		t.Errorf("fanout %d expected %d for %d acked", tr.Fanout, tr.Expected, tr.Acked)
	}
	if tr.Lost != 0 || tr.Extra != 0 || tr.Duplicates != 0 || tr.SeqGaps != 0 || tr.SeqDups != 0 || tr.SeqReorders != 0 || tr.Foreign != 0 || tr.ConnLost != 0 {
		t.Errorf("lost %d extra %d dups %d gaps %d seqdups %d reorders %d foreign %d connlost %d",
			tr.Lost, tr.Extra, tr.Duplicates, tr.SeqGaps, tr.SeqDups, tr.SeqReorders, tr.Foreign, tr.ConnLost)
	}
	// Paced runs report how late their sends were written; flat out none.
	if paced := tr.TargetRate > 0; paced != (tr.SendLag != nil) || paced && tr.SendLag.Count == 0 {
		t.Errorf("rate %v, send lag %+v", tr.TargetRate, tr.SendLag)
	}
	if rep.Scenario == "group" {
		// Group messages are numbered in the group's log: every delivery
		// is checked by gseq, and every sender (a member) learns its own
		// messages' gseqs from their ACKs.
		if tr.GSeqDeliveries != tr.Delivered || tr.OwnGSeqs != tr.Acked {
			t.Errorf("gseq deliveries %d of %d, own gseqs %d of %d acked", tr.GSeqDeliveries, tr.Delivered, tr.OwnGSeqs, tr.Acked)
		}
	} else if tr.GSeqDeliveries != 0 || tr.OwnGSeqs != 0 {
		t.Errorf("one-to-one run with gseqs: %d deliveries, %d own", tr.GSeqDeliveries, tr.OwnGSeqs)
	}
	if tr.Delivered != tr.Expected || tr.DeliveredPerSec <= 0 || tr.SentPerSec <= 0 || tr.Latency.Count == 0 || tr.Latency.P99 <= 0 {
		t.Errorf("delivered %d (%f/s), latency %+v", tr.Delivered, tr.DeliveredPerSec, tr.Latency)
	}
	if !rep.OK {
		t.Errorf("report not OK: %v", rep.Errors)
	}
	if len(rep.Resources.Servers) != 1 || rep.Resources.Servers[0].RSSEnd <= 0 {
		t.Errorf("no server sample: %+v", rep.Resources)
	}
}

// checkSeconds checks a traffic report's seconds: at least one, each with
// latencies no higher than the run's highest. Runs that check them last 2
// s, so that a second's tick falls inside the window even when it is late.
func checkSeconds(t *testing.T, tr *TrafficReport) {
	t.Helper()
	if len(tr.Seconds) == 0 {
		t.Fatal("no second with latencies")
	}
	for _, s := range tr.Seconds {
		if s.P99 <= 0 || s.P99 > s.Max || s.Max > tr.Latency.Max || s.Delivered <= 0 {
			t.Errorf("second %+v, run max %.3f ms", s, tr.Latency.Max)
		}
	}
}

func TestChatFlatOut(t *testing.T) {
	ts := startServer(t)
	cfg := testConfig("chat", ts.addr, 10)
	cfg.Duration = 2 * time.Second
	rep := runOK(t, cfg)
	checkTraffic(t, rep, 1)
	checkSeconds(t, rep.Traffic)
	if rep.Users != 10 {
		t.Errorf("users %d", rep.Users)
	}
}

func TestChatPacedWithBulkUsersAndSourceIPs(t *testing.T) {
	ts := startServer(t)
	cfg := testConfig("chat", ts.addr, 10)
	cfg.Rate = 200
	cfg.BulkDB = ts.db
	cfg.SourceIPs = 3
	cfg.AckInterval = 0 // DELIVERED after every read
	cfg.ClientMsgID = false
	rep := runOK(t, cfg)
	checkTraffic(t, rep, 1)
	if !strings.Contains(rep.UserCreation, "bulk") {
		t.Errorf("user creation %q", rep.UserCreation)
	}
	// 200/s for 1 s after warm-up: far below flat out.
	if s := rep.Traffic.SentPerSec; s > 400 {
		t.Errorf("paced at 200/s but sent %.0f/s", s)
	}
}

// TestChatReusesUsersOfAnEarlierRun: -bulk-db with the -prefix of an
// earlier run keeps its users and their history (a warm database), says
// so, and the run is measured as any other: its clientmsgids are not the
// earlier run's, which the server would take for retries and not store.
func TestChatReusesUsersOfAnEarlierRun(t *testing.T) {
	ts := startServer(t)
	cfg := testConfig("chat", ts.addr, 10)
	cfg.Rate = 200
	cfg.BulkDB = ts.db
	cfg.Prefix = "warm"
	if rep := runOK(t, cfg); rep.UsersReused != 0 {
		t.Fatalf("first run reused %d users", rep.UsersReused)
	}
	rep := runOK(t, cfg)
	if rep.UsersReused != 10 || rep.SignupPerSec != 0 {
		t.Fatalf("second run reused %d users, created %.0f/s; want 10 and none", rep.UsersReused, rep.SignupPerSec)
	}
	checkTraffic(t, rep, 1)
	// The first run acknowledged all it got before it closed: nothing of
	// it comes again.
	if rep.Traffic.Stale != 0 {
		t.Errorf("second run got %d of the first run's messages again", rep.Traffic.Stale)
	}
	// Groups too: the earlier run's group names are taken.
	g := testConfig("group", ts.addr, 10)
	g.Groups, g.BulkDB, g.Prefix = 2, ts.db, "gwarm"
	runOK(t, g)
	rep = runOK(t, g)
	if rep.UsersReused != 10 {
		t.Fatalf("second group run reused %d users, want 10", rep.UsersReused)
	}
	checkTraffic(t, rep, 4)
	if rep.Traffic.Stale != 0 {
		t.Errorf("second group run got %d of the first run's messages again", rep.Traffic.Stale)
	}
}

func TestGroupFanout(t *testing.T) {
	ts := startServer(t)
	cfg := testConfig("group", ts.addr, 10)
	cfg.Groups, cfg.GroupSize, cfg.SendersPerGroup = 2, 5, 2
	rep := runOK(t, cfg)
	checkTraffic(t, rep, 4)
}

// TestGroupAcksAdvance: chatbench's DELIVERED frames (here sent after every
// read) move each member's position in its group's log, so a member that
// logs in again after the run is sent no group backlog.
func TestGroupAcksAdvance(t *testing.T) {
	ts := startServer(t)
	cfg := testConfig("group", ts.addr, 8)
	cfg.Groups, cfg.GroupSize, cfg.SendersPerGroup = 2, 4, 2
	cfg.AckInterval = 0
	cfg.Duration, cfg.Warmup = 500*time.Millisecond, 0
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	w := newWorker(cfg)
	defer w.closeAll()
	for _, ph := range []string{"setup", "run", "drain"} {
		if err := w.phase(ctx, ph); err != nil {
			t.Fatalf("%s: %v", ph, err)
		}
	}
	l := w.ledger.Counts()
	if l.Acked == 0 || l.Delivered != l.Acked*3 || l.GSeqChecked != l.Delivered || l.GSeqHoles != 0 || l.SeqDups != 0 || l.Reorders != 0 {
		t.Fatalf("run: %+v", l)
	}
	for _, u := range w.users {
		u.c.flushAck()
		// Requests on a connection are served in order: the PONG comes
		// after the DELIVERED took effect.
		if err := u.c.ping(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, i := range []int{0, 3} { // a sender and a receiver of group 0
		u := w.users[i]
		nc, err := w.dial.dial(ctx, ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		c := newConn(nc)
		var again atomic.Int64
		c.onDelivery = func(_ *bconn, g *groupPos, seq int64, _ []byte, _ int64) {
			again.Add(1)
			t.Logf("user %d sent again: group %v seq %d", i, g != nil, seq)
		}
		c.start()
		if _, _, err := c.login(ctx, u.id, cfg.ChildPassword, ""); err != nil {
			t.Fatal(err)
		}
		if err := c.ping(ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond) // a backlog need not come before the PONG
		if n := again.Load(); n != 0 {
			t.Errorf("user %d: %d messages sent again after they were acknowledged", i, n)
		}
		c.Close()
	}
}

func TestChatTwoProcesses(t *testing.T) {
	ts := startServer(t)
	cfg := testConfig("chat", ts.addr, 12)
	cfg.Procs = 2
	cfg.Duration = 2 * time.Second
	rep := runOK(t, cfg)
	checkTraffic(t, rep, 1)
	checkSeconds(t, rep.Traffic) // from the children's stat lines
	if rep.Users != 12 {
		t.Errorf("users %d over two processes", rep.Users)
	}
	// One node: every user on it, as LOGIN_ACK says, and no pair across
	// nodes (the processes' counts add up).
	if len(rep.Nodes) != 1 || rep.Pairs != 6 || rep.CrossPairs != 0 {
		t.Errorf("nodes %v, pairs %d, across nodes %d", rep.Nodes, rep.Pairs, rep.CrossPairs)
	}
	for _, n := range rep.Nodes {
		if n != 12 {
			t.Errorf("nodes %v: want all 12 users on the one node", rep.Nodes)
		}
	}
}

// With -cross-node, users that all landed on one node cannot be paired
// across nodes: the run fails at setup and says why. (The cluster tests run
// it through nginx in front of two nodes.)
func TestCrossNodeNeedsTwoNodes(t *testing.T) {
	ts := startServer(t)
	cfg := testConfig("chat", ts.addr, 8)
	cfg.CrossNode = true
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := run(ctx, cfg, testLog{t})
	if err == nil || !strings.Contains(err.Error(), "all 8 users logged in on node") {
		t.Fatalf("-cross-node on one node: %v", err)
	}
}

func TestConnectWithBaseline(t *testing.T) {
	ts := startServer(t)
	cfg := testConfig("connect", ts.addr, 10)
	cfg.CompareBaseline = true
	cfg.Procs = 2
	rep := runOK(t, cfg)
	c, b := rep.Connect, rep.Baseline
	if c == nil || c.Connected != 10 || c.Failed != 0 || c.Dropped != 0 || c.RSSBefore <= 0 {
		t.Fatalf("connect %+v", c)
	}
	if b == nil || b.Connected != 10 || b.Failed != 0 || b.RSSBefore <= 0 {
		t.Fatalf("baseline %+v", b)
	}
	if !rep.OK {
		t.Errorf("not OK: %v", rep.Errors)
	}
}

func TestChatWithRelayBaseline(t *testing.T) {
	ts := startServer(t)
	cfg := testConfig("chat", ts.addr, 10)
	cfg.CompareBaseline = true
	cfg.Rate = 200
	cfg.Duration = 2 * time.Second
	rep := runOK(t, cfg)
	checkTraffic(t, rep, 1)
	rb := rep.Relay
	if rb == nil || rb.Traffic == nil {
		t.Fatal("no relay baseline in the report")
	}
	// The relay run is checked like ours: every message delivered once, in
	// seq order, at the same paced rate, with its own server sample.
	relay := &Report{Scenario: "chat", Traffic: rb.Traffic, Resources: rb.Resources, OK: rb.OK, Errors: rb.Errors}
	checkTraffic(t, relay, 1) // fails unless exactly one server was sampled
	checkSeconds(t, rep.Traffic)
	checkSeconds(t, rb.Traffic)
	if rb.Traffic.TargetRate != cfg.Rate {
		t.Errorf("relay run at %v msg/s, ours at %v", rb.Traffic.TargetRate, cfg.Rate)
	}
	if len(rb.Resources.Servers) == 1 && rb.Resources.Servers[0].PID == os.Getpid() {
		t.Error("relay CPU sampled from chatbench itself, not the relay process")
	}
	if want := rep.Traffic.DeliveredPerSec / rb.Traffic.DeliveredPerSec; rb.DeliveredRatio != want {
		t.Errorf("delivered ratio %v, want %v", rb.DeliveredRatio, want)
	}
	if want := rep.Traffic.Latency.P99 / rb.Traffic.Latency.P99; rb.P99Ratio != want {
		t.Errorf("p99 ratio %v, want %v", rb.P99Ratio, want)
	}
	var buf bytes.Buffer
	printTable(&buf, rep)
	for _, row := range []string{"relay baseline", "relay latency", "ratio to relay"} {
		if !strings.Contains(buf.String(), row) {
			t.Errorf("table has no %q row", row)
		}
	}
}

func TestLoginStorm(t *testing.T) {
	ts := startServer(t)
	rep := runOK(t, testConfig("login", ts.addr, 10))
	l := rep.Login
	if l == nil || l.Reconnecting != 10 || l.Back != 10 || l.Failed != 0 || l.AllBackSeconds <= 0 || l.Latency.Count != 10 {
		t.Fatalf("login %+v", l)
	}
}

// TestLoginStormReconnectAddr: with -reconnect-addr users log back in at
// those addresses in turn, moving on after a failed attempt: the users
// that start at an address where nothing listens (as after a node's
// SIGKILL) come back through the next one.
func TestLoginStormReconnectAddr(t *testing.T) {
	ts := startServer(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	cfg := testConfig("login", ts.addr, 10)
	cfg.ReconnectAddrs = []string{dead, ts.addr}
	rep := runOK(t, cfg)
	l := rep.Login
	if l == nil || l.Reconnecting != 10 || l.Back != 10 || l.Failed != 0 || l.Retries < 5 {
		t.Fatalf("login %+v (want 10 back, at least 5 retries: users 0, 2, ... start at %s)", l, dead)
	}
}

func TestParseFlags(t *testing.T) {
	var out bytes.Buffer
	cfg, err := parseFlags([]string{"-addr", "127.0.0.1:1,127.0.0.2:2", "-n", "250", "-group-size", "50", "group"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Groups != 5 || cfg.N != 250 || len(cfg.Addrs) != 2 || cfg.Prefix == "" || cfg.ChildPassword != "benchpass" {
		t.Fatalf("%+v", cfg)
	}
	if cfg, err := parseFlags([]string{"-addr", "127.0.0.1:1", "-reconnect-addr", "127.0.0.1:2,127.0.0.1:3", "login"}, &out); err != nil || len(cfg.ReconnectAddrs) != 2 {
		t.Fatalf("-reconnect-addr: %v %+v", err, cfg.ReconnectAddrs)
	}
	for _, bad := range [][]string{
		{"chat", "extra"}, {"nope"}, {"-addr", "10.0.0.1:6000", "chat"}, {"-pid", "abc", "chat"},
		{"-procs", "0", "chat"}, {"-password", "x", "chat"}, {"-size", "0", "chat"},
		{"-compare-baseline", "group"}, {"-compare-baseline", "login"},
		{"-reconnect-addr", "10.0.0.1:6000", "login"}, {"-reconnect-addr", "127.0.0.1:2", "chat"},
		{"-cross-node", "group"}, {"-cross-node", "-addr-recv", "127.0.0.1:2", "chat"},
	} {
		if _, err := parseFlags(bad, &out); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
	c := splitConfig(Config{Scenario: "chat", N: 10, Rate: 100, Prefix: "p-"}, 1, 3)
	if c.N != 4 || c.Rate != 40 || c.Prefix != "p-p1-" || c.Procs != 1 {
		t.Fatalf("split %+v", c)
	}
	g := splitConfig(Config{Scenario: "group", Groups: 3, GroupSize: 4}, 0, 2)
	if g.Groups != 2 || g.N != 8 {
		t.Fatalf("group split %+v", g)
	}
}

// relayFault is what a faulty relay does with one of chatbench's ONE_CHATs.
type relayFault int

const (
	relayPass          relayFault = iota // relay it
	relayDrop                            // no ACK, no delivery
	relayNoAck                           // deliver it, no ACK
	relayNoDelivery                      // ACK it, no delivery
	relayPassThenClose                   // relay it, then close the sender's connection
)

// faultyRelay starts an in-process relay baseline in which fault decides
// the fate of each chatbench message (by sender and counter) first; fault
// runs on the sender's connection's goroutine, so sleeping in it stalls
// that connection as a server would.
func faultyRelay(t *testing.T, fault func(sender int32, counter uint64) relayFault) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := newRelay()
	done := make(chan int)
	go func() {
		done <- acceptLoop("faulty-relay", ln, io.Discard, func(nc net.Conn) {
			c := &relayConn{nc: nc}
			defer func() { _ = nc.Close(); r.setUser(c, 0) }()
			readFrames(nc, func(body []byte) bool {
				f := relayPass
				req, err := codec.ParseRequest(body)
				if err == nil && req.MsgID == codec.MsgOneChat && req.Msg != nil && req.ToID != nil {
					if _, s, n, ok := parseBody([]byte(*req.Msg)); ok {
						f = fault(s, n)
					}
				}
				switch f {
				case relayDrop:
				case relayNoAck:
					r.deliver(c.user, codec.UserID(*req.ToID), *req.Msg)
				case relayNoDelivery:
					c.write(codec.MustMarshal(&codec.Ack{MsgID: codec.MsgAck, ReqID: req.ReqID, Ack: codec.MsgOneChat}))
				default:
					r.handle(c, body)
				}
				return f != relayPassThenClose
			})
		})
	}()
	t.Cleanup(func() { _ = ln.Close(); <-done })
	return ln.Addr().String()
}

// relayConfig is a chat run of n users against a faulty relay (in this
// process: no server to sample), paced at 400 msg/s, with a 1 s drain.
func relayConfig(addr string, n int) Config {
	cfg := testConfig("chat", addr, n)
	cfg.PIDs = nil
	cfg.Rate = 400
	cfg.Drain = time.Second
	return cfg
}

func hasError(rep *Report, substr string) bool {
	return slices.ContainsFunc(rep.Errors, func(e string) bool { return strings.Contains(e, substr) })
}

// stallRelay is a relay that stalls for d from at after the run phase
// begins.
func stallRelay(t *testing.T, at, d time.Duration) string {
	var stallAt atomic.Int64 // unix nanos; 0: not armed
	addr := faultyRelay(t, func(int32, uint64) relayFault {
		if a := stallAt.Load(); a != 0 {
			if now := time.Now().UnixNano(); now >= a && now < a+int64(d) {
				time.Sleep(time.Duration(a + int64(d) - now))
			}
		}
		return relayPass
	})
	onRunPhase = func() func() {
		stallAt.Store(time.Now().Add(at).UnixNano())
		return func() {}
	}
	t.Cleanup(func() { onRunPhase = nil })
	return addr
}

// TestPacedLatencyCountsTheWaitToSend: at a fixed rate the relay stalls
// for 500 ms. The messages due during the stall wait in chatbench, behind
// the full in-flight window, and are written when it ends; their latencies
// run from when they were due, so the stall shows in the percentiles
// (coordinated omission would hide it) and in the send lag.
func TestPacedLatencyCountsTheWaitToSend(t *testing.T) {
	// 1.2 s into the run phase: 1 s into the window, which lasts 2 s.
	addr := stallRelay(t, 1200*time.Millisecond, 500*time.Millisecond)
	cfg := relayConfig(addr, 10) // 5 senders at 200 msg/s each
	cfg.Rate, cfg.Inflight, cfg.Duration = 1000, 8, 2*time.Second
	tr := runOK(t, cfg).Traffic
	// A quarter of the window's 2,000 messages were due during the stall:
	// their latencies spread from ~0 to 500 ms, which puts p90 near 300 ms.
	if tr.Latency.P90 < 100 || tr.AckLatency.P90 < 100 {
		t.Errorf("p90 %.3f ms, ACK p90 %.3f ms: a quarter of the messages were due during a 500 ms stall", tr.Latency.P90, tr.AckLatency.P90)
	}
	// Those past the in-flight window's 8 per sender waited up to ~460 ms
	// to be written.
	if tr.SendLag == nil || tr.SendLag.Count < 1000 || tr.SendLag.Max < 300 {
		t.Errorf("send lag %+v, want one per message and a max near 460 ms", tr.SendLag)
	}
	if tr.Lost != 0 || tr.Extra != 0 || tr.Unanswered != 0 || tr.AckErrors != 0 {
		t.Errorf("lost %d extra %d unanswered %d ack errors %d", tr.Lost, tr.Extra, tr.Unanswered, tr.AckErrors)
	}
}

// TestPacedStallAtTheEndCounts: a stall in the window's last 500 ms
// counts like one in its middle: the messages due in it are written when
// it ends, after the window, and their latencies are measured.
func TestPacedStallAtTheEndCounts(t *testing.T) {
	cfg := relayConfig(stallRelay(t, 1700*time.Millisecond, 500*time.Millisecond), 10)
	cfg.Rate, cfg.Inflight, cfg.Duration = 1000, 8, 2*time.Second // the window: 0.2-2.2 s
	rep := runOK(t, cfg)
	tr := rep.Traffic
	if tr.Latency.P90 < 100 || tr.DueUnsent != 0 {
		t.Errorf("p90 %.3f ms, due but never sent %d: a quarter of the messages were due during a 500 ms stall, and all were sent late",
			tr.Latency.P90, tr.DueUnsent)
	}
	if tr.Lost != 0 || tr.Unanswered != 0 {
		t.Errorf("lost %d unanswered %d", tr.Lost, tr.Unanswered)
	}
}

// TestPacedStallPastTheDrainFails: a stall that outlasts the window by
// more than -drain leaves messages due in the window unwritten: the run
// says so and fails.
func TestPacedStallPastTheDrainFails(t *testing.T) {
	cfg := relayConfig(stallRelay(t, 1700*time.Millisecond, 2500*time.Millisecond), 10)
	cfg.Rate, cfg.Inflight, cfg.Duration = 1000, 8, 2*time.Second
	cfg.Drain = 500 * time.Millisecond
	rep, err := run(context.Background(), cfg, testLog{t})
	if err != nil {
		t.Fatal(err)
	}
	if tr := rep.Traffic; tr == nil || tr.DueUnsent == 0 || rep.OK || !hasError(rep, "due in the window were never sent") {
		t.Errorf("OK %v, errors %q, traffic %+v", rep.OK, rep.Errors, rep.Traffic)
	}
}

// TestPacedRunThatFallsBehindFails: the relay takes 20 ms over each
// message and a sender has one in flight, so a sender paced at 200 msg/s
// manages 50: the run reports the rate it sent and fails.
func TestPacedRunThatFallsBehindFails(t *testing.T) {
	addr := faultyRelay(t, func(int32, uint64) relayFault {
		time.Sleep(20 * time.Millisecond)
		return relayPass
	})
	cfg := relayConfig(addr, 4) // 2 senders at 200 msg/s each
	cfg.Inflight = 1
	rep := runOK(t, cfg)
	tr := rep.Traffic
	if tr.SentPerSec > 200 || rep.OK || !hasError(rep, "below 98 % of -rate 400: the load generator fell behind") {
		t.Errorf("sent %.0f/s of 400, OK %v, errors %q", tr.SentPerSec, rep.OK, rep.Errors)
	}
	// What it did send was delivered; each message waited longer to be
	// written than the last.
	if tr.Lost != 0 || tr.Unanswered != 0 || tr.SendLag == nil || tr.SendLag.Max < 300 || tr.Latency.P50 < 100 {
		t.Errorf("lost %d, unanswered %d, send lag %+v, latency %+v", tr.Lost, tr.Unanswered, tr.SendLag, tr.Latency)
	}
}

// TestUnansweredSendFailsTheRun: the relay drops one message (no ACK, no
// delivery). It was never acked, so it is not lost, but unanswered: the
// drain waits for it until -drain, says so, and the run fails.
func TestUnansweredSendFailsTheRun(t *testing.T) {
	var dropped atomic.Int64
	addr := faultyRelay(t, func(s int32, c uint64) relayFault {
		if s == 0 && c == 50 {
			dropped.Add(1)
			return relayDrop
		}
		return relayPass
	})
	rep := runOK(t, relayConfig(addr, 4))
	tr := rep.Traffic
	if dropped.Load() != 1 {
		t.Fatalf("the relay dropped %d messages, want 1", dropped.Load())
	}
	if tr.Unanswered != 1 || tr.Sent != tr.Acked+tr.AckErrors+tr.Unanswered || tr.Lost != 0 || tr.Extra != 0 {
		t.Errorf("sent %d = acked %d + ack errors %d + unanswered %d? lost %d extra %d",
			tr.Sent, tr.Acked, tr.AckErrors, tr.Unanswered, tr.Lost, tr.Extra)
	}
	if rep.OK || !tr.DrainTimedOut || !hasError(rep, "drain timed out after 1s (-drain): 1 sends unanswered, 0 acked deliveries missing") {
		t.Errorf("OK %v, drain timed out %v, errors %q", rep.OK, tr.DrainTimedOut, rep.Errors)
	}
}

// TestUnackedDeliveryDoesNotHideLoss: the relay delivers message A without
// an ACK, and ACKs message B without delivering it. The counts agree
// (delivered = acked), but B is lost and A extra, message by message.
func TestUnackedDeliveryDoesNotHideLoss(t *testing.T) {
	var faults atomic.Int64
	addr := faultyRelay(t, func(s int32, c uint64) relayFault {
		switch {
		case s == 0 && c == 50:
			faults.Add(1)
			return relayNoAck
		case s == 0 && c == 60:
			faults.Add(1)
			return relayNoDelivery
		}
		return relayPass
	})
	rep := runOK(t, relayConfig(addr, 4))
	tr := rep.Traffic
	if faults.Load() != 2 {
		t.Fatalf("%d faults, want 2", faults.Load())
	}
	if tr.Delivered != tr.Expected {
		t.Errorf("delivered %d, expected %d: the counts should agree", tr.Delivered, tr.Expected)
	}
	if tr.Lost != 1 || tr.Extra != 1 || tr.Unanswered != 1 || rep.OK {
		t.Errorf("lost %d extra %d unanswered %d OK %v, want 1, 1, 1, false", tr.Lost, tr.Extra, tr.Unanswered, rep.OK)
	}
}

// TestSenderConnectionLostFailsTheRun: the relay closes sender 0's
// connection after relaying its 22nd message, ~1.05 s into the run; that
// sender stops, and the run fails, saying why. (Late in the window, with 20
// senders, the rate sent stays above 98 % of -rate: the lost connection
// alone fails the run.)
func TestSenderConnectionLostFailsTheRun(t *testing.T) {
	addr := faultyRelay(t, func(s int32, c uint64) relayFault {
		if s == 0 && c == 22 {
			return relayPassThenClose
		}
		return relayPass
	})
	rep := runOK(t, relayConfig(addr, 40)) // 20 senders at 20 msg/s each
	tr := rep.Traffic
	if tr.ConnLost != 1 || rep.OK || !hasError(rep, "sender 0: ") {
		t.Errorf("connections lost %d, OK %v, errors %q", tr.ConnLost, rep.OK, rep.Errors)
	}
}
