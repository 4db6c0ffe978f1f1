// Command chatbench benchmarks chatcluster servers: idle connection memory,
// one-to-one and group message throughput and latency, and token-login
// storms, against one node or a cluster behind nginx.
//
// Usage:
//
//	chatbench [flags] connect|chat|group|login
//	chatbench baseline-server -listen ADDR
//	chatbench relay-server -listen ADDR
//
// Start the server with benchmark settings, which chatbench assumes and
// cannot check: chatserver -bcrypt-cost 4 -rate -1 (cheap password hashing
// so that thousands of users are created in seconds; no per-connection
// request rate limit).
//
// Scenarios:
//
//	connect  sign up N users, then open N connections, log them in and hold
//	         them idle for -duration; report the growth of the server's RSS
//	         (-pid) per connection. -baseline targets a baseline-server
//	         instead (no login: one PING per connection); -compare-baseline
//	         also starts one and reports our bytes per connection as a ratio
//	         to it.
//	chat     N/2 senders each send one-to-one messages to their own
//	         recipient, flat out (-inflight requests in flight each) or at
//	         -rate messages/s in total, for -warmup + -duration; senders use
//	         -addr, recipients -addr-recv, so a cluster run can make every
//	         message cross nodes. Through nginx, -cross-node does that
//	         instead: it pairs each sender with a recipient that LOGIN_ACK
//	         ("node") puts on another node. -compare-baseline then runs the same load
//	         against a relay-server it starts (goroutine per connection,
//	         nothing stored: see relay.go) and reports our delivered/s and
//	         p99 beside its own.
//	group    -groups groups of -group-size members; -senders-per-group
//	         members of each group send GROUP_CHAT; every message fans out
//	         to group-size-1 members.
//	login    log N users in, then drop every connection at once (or, with
//	         -kill-pid, SIGKILL that node and wait for the connections it
//	         broke) and log them all back in with their tokens at once: at
//	         their own address, or at -reconnect-addr (user i starts at the
//	         (i mod len)th and moves to the next after a failed attempt).
//	         With -addr on one node and -reconnect-addr on another, every
//	         user of a killed node fails over without nginx.
//
// Every message carries a time stamp, its sender and a counter. At a fixed
// -rate each sender keeps its own schedule (message k due k/rate after it
// starts) and a message is stamped with the time it was due, not when it
// was written: time it waited behind a full in-flight window or a late
// goroutine counts in its latency, as it would for a user (no coordinated
// omission), and how late it was written is reported as the send lag.
// Messages due before the window's end are written after it if they are
// late (for at most -drain), so a stall at the end counts like one in the
// middle. A run that sends below 98 % of -rate in its window, or leaves
// messages due in it unwritten, fails, as the load generator fell
// behind. Flat out a message is stamped when it is written.
// chatbench records the latency of each delivery and ACK from the stamp in
// a log-linear histogram (1 µs resolution up to 60 s), for the messages
// stamped in the window; checks that each recipient's inbox seqs are
// contiguous, that each member's group deliveries come in increasing gseq
// order and, with the gseqs of its own messages (from their ACKs), cover the
// group's log without holes, and that no message arrives twice. After the
// run it drains, up to -drain, until every send is answered and every
// message acked with errno 0 has reached each of its recipients, and counts
// per message: lost, (message, recipient) pairs acked and never delivered;
// extra, deliveries of messages not acked (or to someone else); and sends
// never answered. Deliveries are acknowledged
// with DELIVERED, coalesced per connection over -ack-interval, the
// connections spread over it: the inbox seq and each group's gseq. A
// progress line goes to stderr every second, with the rates and the p99
// and max of the latencies recorded in that second, so that periodic stalls
// show (the final table sums them up, -json lists them); the final table
// goes to stdout (-json: one JSON object).
//
// Users are created with SIGNUP (64 at a time), or much faster with -bulk-db
// DSN, which inserts them straight into the server's database; the report
// says which.
//
// Exit status: 0 all well, 1 the run failed, 2 bad usage, 3 the run
// completed but found loss, duplicates, unanswered sends, errors, failed or
// lost connections, or a paced run that fell behind its rate.
//
// Beyond one process's open-file limit, -procs P re-executes chatbench as P
// worker processes (each with N/P users, their results merged), and
// -source-ips K spreads connections over 127.0.0.1..127.0.0.K.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

// realMain runs chatbench with args and returns the exit code.
func realMain(args []string, stdout, stderr io.Writer) int {
	if raw := os.Getenv(envChildConfig); raw != "" {
		return childMain(raw)
	}
	if len(args) > 0 && args[0] == "baseline-server" {
		return baselineMain(args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "relay-server" {
		return relayMain(args[1:], stdout, stderr)
	}
	cfg, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "chatbench:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	rep, err := run(ctx, cfg, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "chatbench:", err)
	}
	if rep != nil && (err == nil || cfg.JSON) {
		if cfg.JSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			_ = enc.Encode(rep)
		} else {
			printTable(stdout, rep)
		}
	}
	switch {
	case err != nil:
		return 1
	case !rep.OK:
		return 3
	}
	return 0
}

func parseFlags(args []string, out io.Writer) (Config, error) {
	cfg := Config{}
	fs := flag.NewFlagSet("chatbench", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintln(out, "usage: chatbench [flags] connect|chat|group|login\n       chatbench baseline-server -listen ADDR\n       chatbench relay-server -listen ADDR\nflags:")
		fs.PrintDefaults()
	}
	var addr, addrRecv, addrReconnect, pids string
	fs.StringVar(&addr, "addr", "127.0.0.1:6000", "target address(es), comma-separated: a node or nginx")
	fs.StringVar(&addrRecv, "addr-recv", "", "chat: recipients' address(es) (default -addr), e.g. another node")
	fs.BoolVar(&cfg.CrossNode, "cross-node", false, "chat: pair each sender with a recipient that LOGIN_ACK puts on another node, e.g. with -addr nginx in front of a cluster; users left without one stay idle (with -procs, pairs within each process)")
	fs.IntVar(&cfg.N, "n", 1000, "users (chat: half send, half receive, unless -cross-node leaves some idle)")
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "measurement window (connect: hold time)")
	fs.DurationVar(&cfg.Warmup, "warmup", time.Second, "chat, group: sending before the window (not measured)")
	fs.DurationVar(&cfg.Drain, "drain", 15*time.Second, "chat, group: wait at most this long for ACKs and deliveries after the run (running out fails the run)")
	fs.Float64Var(&cfg.Rate, "rate", 0, "chat, group: target messages/s in total, each sender on a fixed schedule; latency counts from when a message was due (0: flat out, from when it was sent)")
	fs.IntVar(&cfg.Size, "size", 100, "message size in bytes (at least the ~40-byte stamp)")
	fs.IntVar(&cfg.GroupSize, "group-size", 100, "group: members per group")
	fs.IntVar(&cfg.Groups, "groups", 0, "group: number of groups (default n/group-size)")
	fs.IntVar(&cfg.SendersPerGroup, "senders-per-group", 1, "group: members of each group that send")
	fs.IntVar(&cfg.Inflight, "inflight", 8, "chat, group: requests in flight per sender")
	fs.StringVar(&pids, "pid", "", "server PIDs, comma-separated, to sample CPU (/proc/PID/stat) and RSS (/proc/PID/status)")
	fs.BoolVar(&cfg.JSON, "json", false, "print one JSON object instead of the table")
	fs.IntVar(&cfg.SourceIPs, "source-ips", 1, "spread connections over local addresses 127.0.0.1..127.0.0.N")
	fs.IntVar(&cfg.Procs, "procs", 1, "worker processes (each has its own open-file limit)")
	fs.StringVar(&cfg.Prefix, "prefix", "", "user name prefix (default random per run); with -bulk-db, an earlier run's prefix reuses its users with their history (a warm database)")
	fs.StringVar(&cfg.Password, "password", "benchpass", "password of every user")
	fs.BoolVar(&cfg.Baseline, "baseline", false, "connect: the target is a baseline-server (no login)")
	fs.BoolVar(&cfg.CompareBaseline, "compare-baseline", false, "connect: also measure a baseline-server started by chatbench, report the ratio; chat: also run the same load against a relay-server started by chatbench")
	fs.IntVar(&cfg.KillPID, "kill-pid", 0, "login: SIGKILL this node instead of closing the connections")
	fs.StringVar(&addrReconnect, "reconnect-addr", "", "login: address(es) users log back in at (default each user's own), tried in turn after a failed attempt, e.g. the surviving node")
	fs.DurationVar(&cfg.AckInterval, "ack-interval", 100*time.Millisecond, "send each connection's coalesced DELIVERED this often, the connections spread over the interval (0: after every read)")
	fs.BoolVar(&cfg.ClientMsgID, "clientmsgid", true, "send a clientmsgid with every message, as the Go client does")
	fs.IntVar(&cfg.Concurrency, "concurrency", 64, "parallel sign-ups and logins during setup")
	fs.DurationVar(&cfg.Timeout, "timeout", 30*time.Second, "per-request timeout during setup; login storm deadline")
	fs.StringVar(&cfg.RedisBench, "redis-bench", "", "after the run, run redis-benchmark -t publish against this host:port as a baseline")
	fs.StringVar(&cfg.BulkDB, "bulk-db", "", "create users directly in the server's database (its -db DSN) instead of SIGNUP: much faster on SQLite")
	fs.BoolVar(&cfg.Quiet, "quiet", false, "no progress lines")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return cfg, errors.New("want exactly one scenario: connect, chat, group or login")
	}
	cfg.Scenario = fs.Arg(0)
	if _, ok := phases[cfg.Scenario]; !ok {
		return cfg, fmt.Errorf("unknown scenario %q", cfg.Scenario)
	}
	cfg.Addrs = splitList(addr)
	cfg.RecvAddrs = splitList(addrRecv)
	cfg.ReconnectAddrs = splitList(addrReconnect)
	if len(cfg.Addrs) == 0 {
		return cfg, errors.New("-addr is required")
	}
	for _, a := range slices.Concat(cfg.Addrs, cfg.RecvAddrs, cfg.ReconnectAddrs) {
		if !loopback(a) {
			return cfg, fmt.Errorf("address %q: chatbench only targets loopback addresses", a)
		}
	}
	for _, p := range splitList(pids) {
		n, err := strconv.Atoi(p)
		if err != nil || n <= 0 {
			return cfg, fmt.Errorf("-pid: bad pid %q", p)
		}
		if !readProc(n).ok {
			return cfg, fmt.Errorf("-pid %d: no such process (or /proc not readable)", n)
		}
		cfg.PIDs = append(cfg.PIDs, n)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = fmt.Sprintf("cb%06x-", rand.IntN(1<<24))
	}
	if l := len(cfg.Password); l < 6 || l > 72 {
		return cfg, errors.New("-password must be 6..72 bytes")
	}
	cfg.ChildPassword = cfg.Password
	if cfg.Scenario == "group" && cfg.Groups == 0 && cfg.GroupSize > 0 {
		cfg.Groups = cfg.N / cfg.GroupSize
	}
	if cfg.Scenario == "group" {
		cfg.N = cfg.Groups * cfg.GroupSize
	}
	switch {
	case cfg.N < 1:
		return cfg, errors.New("-n must be positive (group: -groups * -group-size)")
	case cfg.Procs < 1 || cfg.Procs > 64:
		return cfg, errors.New("-procs must be 1..64")
	case cfg.SourceIPs < 1 || cfg.SourceIPs > 254:
		return cfg, errors.New("-source-ips must be 1..254")
	case cfg.Inflight < 1 || cfg.Concurrency < 1:
		return cfg, errors.New("-inflight and -concurrency must be positive")
	case cfg.Duration <= 0 || cfg.Timeout <= 0 || cfg.Warmup < 0 || cfg.Drain < 0:
		return cfg, errors.New("-duration and -timeout must be positive, -warmup and -drain not negative")
	case cfg.Size < 1 || cfg.Size > 4000:
		return cfg, errors.New("-size must be 1..4000 (the server's default max-message is 4096)")
	case cfg.Rate < 0:
		return cfg, errors.New("-rate must not be negative")
	case cfg.CompareBaseline && cfg.Scenario != "connect" && cfg.Scenario != "chat":
		return cfg, errors.New("-compare-baseline is for the connect and chat scenarios")
	case len(cfg.ReconnectAddrs) > 0 && cfg.Scenario != "login":
		return cfg, errors.New("-reconnect-addr is for the login scenario")
	case cfg.CrossNode && (cfg.Scenario != "chat" || len(cfg.RecvAddrs) > 0):
		return cfg, errors.New("-cross-node is for the chat scenario, without -addr-recv")
	}
	return cfg, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// loopback reports whether addr is host:port with a loopback host.
func loopback(addr string) bool {
	host, _, ok := strings.Cut(addr, ":")
	if i := strings.LastIndexByte(addr, ':'); i >= 0 {
		host = strings.Trim(addr[:i], "[]")
	}
	return ok && (host == "localhost" || strings.HasPrefix(host, "127.") || host == "::1")
}
