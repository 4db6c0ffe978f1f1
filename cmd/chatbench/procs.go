package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// A handle drives one worker: in this process (local) or in a child
// process started with -procs.
type handle interface {
	phase(ctx context.Context, name string) error
	live() LiveStats
	result(ctx context.Context) (WorkerResult, error)
	pid() int
	stop()
}

type localHandle struct{ w *worker }

func (h localHandle) phase(ctx context.Context, name string) error { return h.w.phase(ctx, name) }
func (h localHandle) live() LiveStats                              { return h.w.live() }
func (h localHandle) result(context.Context) (WorkerResult, error) { return h.w.result(), nil }
func (h localHandle) pid() int                                     { return os.Getpid() }
func (h localHandle) stop()                                        { h.w.closeAll() }

// Environment variables of the self re-exec.
const (
	envChildConfig = "CHATBENCH_CHILD_CONFIG" // a worker child: Config as JSON
	envSelfExec    = "CHATBENCH_SELF_EXEC"    // any re-exec of chatbench (tests use it)
)

// The child protocol: the parent writes one line per command on the
// child's stdin ("phase NAME" or "result"); the child answers on stdout with
// "done NAME", "error MESSAGE" or "result JSON", and writes "stat JSON"
// every second. EOF on stdin ends the child.
type childHandle struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string
	stat  atomic.Pointer[LiveStats]
	exit  chan struct{}
}

// selfCommand is chatbench re-executing itself.
func selfCommand(args ...string) (*exec.Cmd, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), envSelfExec+"=1")
	cmd.Stderr = os.Stderr
	// Die with the parent.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd, nil
}

func startChild(cfg Config) (*childHandle, error) {
	raw, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	cmd, err := selfCommand()
	if err != nil {
		return nil, err
	}
	cmd.Env = append(cmd.Env, envChildConfig+"="+string(raw))
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	h := &childHandle{cmd: cmd, in: in, lines: make(chan string, 16), exit: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 64<<20)
		for sc.Scan() {
			line := sc.Text()
			if v, ok := strings.CutPrefix(line, "stat "); ok {
				var ls LiveStats
				if json.Unmarshal([]byte(v), &ls) == nil {
					h.stat.Store(&ls)
				}
				continue
			}
			h.lines <- line
		}
		_ = cmd.Wait()
		close(h.exit)
		close(h.lines)
	}()
	return h, nil
}

func (h *childHandle) pid() int { return h.cmd.Process.Pid }

func (h *childHandle) live() LiveStats {
	if p := h.stat.Load(); p != nil {
		return *p
	}
	return LiveStats{}
}

// await waits for the next answer line.
func (h *childHandle) await(ctx context.Context) (string, error) {
	select {
	case line, ok := <-h.lines:
		if !ok {
			return "", fmt.Errorf("child %d exited", h.pid())
		}
		return line, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

func (h *childHandle) phase(ctx context.Context, name string) error {
	if _, err := fmt.Fprintf(h.in, "phase %s\n", name); err != nil {
		return fmt.Errorf("child %d: %w", h.pid(), err)
	}
	line, err := h.await(ctx)
	if err != nil {
		return err
	}
	if v, ok := strings.CutPrefix(line, "error "); ok {
		return fmt.Errorf("child %d: %s", h.pid(), v)
	}
	if line != "done "+name {
		return fmt.Errorf("child %d: unexpected answer %q", h.pid(), line)
	}
	return nil
}

func (h *childHandle) result(ctx context.Context) (WorkerResult, error) {
	var r WorkerResult
	if _, err := fmt.Fprintln(h.in, "result"); err != nil {
		return r, err
	}
	line, err := h.await(ctx)
	if err != nil {
		return r, err
	}
	v, ok := strings.CutPrefix(line, "result ")
	if !ok {
		return r, fmt.Errorf("child %d: unexpected answer %q", h.pid(), line)
	}
	return r, json.Unmarshal([]byte(v), &r)
}

func (h *childHandle) stop() {
	_ = h.in.Close()
	select {
	case <-h.exit:
	case <-time.After(30 * time.Second):
		_ = h.cmd.Process.Kill()
		<-h.exit
	}
}

// childMain is the worker side of the child protocol.
func childMain(raw string) int {
	raiseFileLimit()
	var cfg Config
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "chatbench child: bad config:", err)
		return 2
	}
	w := newWorker(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	say := func(format string, args ...any) {
		mu.Lock()
		fmt.Fprintf(os.Stdout, format+"\n", args...)
		mu.Unlock()
	}
	statStop := make(chan struct{})
	defer close(statStop)
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-statStop:
				return
			case <-t.C:
				b, _ := json.Marshal(w.live())
				say("stat %s", b)
			}
		}
	}()
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		cmd := sc.Text()
		if name, ok := strings.CutPrefix(cmd, "phase "); ok {
			if err := w.phase(ctx, name); err != nil {
				say("error %s", strings.ReplaceAll(err.Error(), "\n", " "))
				continue
			}
			say("done %s", name)
			continue
		}
		if cmd == "result" {
			b, err := json.Marshal(w.result())
			if err != nil {
				say("error %v", err)
				continue
			}
			say("result %s", b)
		}
	}
	w.closeAll()
	return 0
}

// splitConfig is process k's share of cfg among p processes.
func splitConfig(cfg Config, k, p int) Config {
	c := cfg
	c.Procs = 1
	share := func(n int) int {
		s := n / p
		if k < n%p {
			s++
		}
		return s
	}
	switch cfg.Scenario {
	case "chat":
		pairs := cfg.N / 2
		c.N = 2 * share(pairs)
		if pairs > 0 {
			c.Rate = cfg.Rate * float64(c.N/2) / float64(pairs)
		}
	case "group":
		c.Groups = share(cfg.Groups)
		c.N = c.Groups * cfg.GroupSize
		if cfg.Groups > 0 {
			c.Rate = cfg.Rate * float64(c.Groups) / float64(cfg.Groups)
		}
	default:
		c.N = share(cfg.N)
	}
	c.Prefix = fmt.Sprintf("%sp%d-", cfg.Prefix, k)
	return c
}

// startHandles starts the workers of cfg.
func startHandles(cfg Config) ([]handle, error) {
	if cfg.Procs <= 1 {
		return []handle{localHandle{newWorker(cfg)}}, nil
	}
	var hs []handle
	for k := 0; k < cfg.Procs; k++ {
		c := splitConfig(cfg, k, cfg.Procs)
		if c.N == 0 {
			continue
		}
		h, err := startChild(c)
		if err != nil {
			stopHandles(hs)
			return nil, err
		}
		hs = append(hs, h)
	}
	return hs, nil
}

func stopHandles(hs []handle) {
	var wg sync.WaitGroup
	for _, h := range hs {
		wg.Add(1)
		go func() { defer wg.Done(); h.stop() }()
	}
	wg.Wait()
}

// runPhase runs one phase on every worker at once.
func runPhase(ctx context.Context, hs []handle, name string) error {
	errs := make([]error, len(hs))
	var wg sync.WaitGroup
	for i, h := range hs {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = h.phase(ctx, name) }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("phase %s: %w", name, err)
	}
	return nil
}

// collect fetches and merges the workers' results.
func collect(ctx context.Context, hs []handle) (WorkerResult, error) {
	var m WorkerResult
	for _, h := range hs {
		r, err := h.result(ctx)
		if err != nil {
			return m, err
		}
		m.merge(r)
	}
	return m, nil
}

// merge adds r to m: counts add up, durations take the slowest process.
func (m *WorkerResult) merge(r WorkerResult) {
	m.Ledger.Add(r.Ledger)
	m.Fanout = max(m.Fanout, r.Fanout)
	m.Expected += r.Expected
	m.Lost += r.Lost
	m.Extra += r.Extra
	m.DrainTimedOut = m.DrainTimedOut || r.DrainTimedOut
	m.Users += r.Users
	m.SignupSeconds = max(m.SignupSeconds, r.SignupSeconds)
	m.UsersReused += r.UsersReused
	m.LoginSeconds = max(m.LoginSeconds, r.LoginSeconds)
	m.GroupSeconds = max(m.GroupSeconds, r.GroupSeconds)
	m.DrainSeconds = max(m.DrainSeconds, r.DrainSeconds)
	m.Connected += r.Connected
	m.ConnFailed += r.ConnFailed
	m.Dropped += r.Dropped
	if m.Nodes == nil && len(r.Nodes) > 0 {
		m.Nodes = map[string]int{}
	}
	for n, k := range r.Nodes {
		m.Nodes[n] += k
	}
	m.Pairs += r.Pairs
	m.CrossPairs += r.CrossPairs
	m.Stormed += r.Stormed
	m.Back += r.Back
	m.StormFailed += r.StormFailed
	m.Retries += r.Retries
	m.AllBackNanos = max(m.AllBackNanos, r.AllBackNanos)
	m.Reconnect.Merge(r.Reconnect)
	for _, e := range r.Errors {
		if len(m.Errors) < 20 {
			m.Errors = append(m.Errors, e)
		}
	}
}

// benchPIDs lists chatbench's own processes.
func benchPIDs(hs []handle) []int {
	pids := []int{os.Getpid()}
	for _, h := range hs {
		if p := h.pid(); p != os.Getpid() {
			pids = append(pids, p)
		}
	}
	return pids
}
