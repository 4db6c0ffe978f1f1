package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatcluster/chatcluster/client"
	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/conf"
	"github.com/chatcluster/chatcluster/server/servertest"
)

// binPath is the chatclient binary under test, built once by TestMain (with
// -race when the tests run with -race).
var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "chatclient-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "chatclient")
	args := []string{"build", "-o", binPath}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command(goTool(), append(args, ".")...)
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building chatclient: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// Generous limits: the suite must pass under -race on a 2-core machine.
const (
	waitLong = 20 * time.Second
	runLimit = 60 * time.Second
)

// testServer is a real chatserver in this process on a loopback port, with
// its own SQLite file; restart keeps both.
type testServer struct {
	*servertest.Server
	t *testing.T
}

func startServer(t *testing.T) *testServer {
	t.Helper()
	srv := servertest.Start(t, func(cfg *conf.Config) {
		cfg.LogLevel = "error"
		if l := os.Getenv("CHATCLIENT_TEST_LOG"); l != "" { // e.g. debug, to see the server's side
			cfg.LogLevel = l
		}
	})
	return &testServer{Server: srv, t: t}
}

func (ts *testServer) start() { ts.Start() }
func (ts *testServer) stop()  { ts.Stop() }

// user is a user made with the client package, logged in on c.
type user struct {
	id       codec.UserID
	name, pw string
	c        *client.Client
}

func (ts *testServer) newUser(name string) *user {
	ts.t.Helper()
	u := &user{name: name, pw: "pw-" + name}
	c := ts.dial()
	id, err := c.Signup(ctxT(ts.t), name, u.pw)
	if err != nil {
		ts.t.Fatalf("signup %s: %v", name, err)
	}
	u.id = id
	ts.login(u)
	return u
}

func (ts *testServer) dial() *client.Client {
	ts.t.Helper()
	c, err := client.Dial(ctxT(ts.t), ts.Addr, client.Options{})
	if err != nil {
		ts.t.Fatalf("dial: %v", err)
	}
	ts.t.Cleanup(func() { c.Close() })
	return c
}

// login (re)connects u with a new client.
func (ts *testServer) login(u *user) {
	ts.t.Helper()
	u.c = ts.dial()
	if _, err := u.c.Login(ctxT(ts.t), u.id, u.pw); err != nil {
		ts.t.Fatalf("login %s: %v", u.name, err)
	}
}

// loginArgs are the flags that log u in.
func (u *user) loginArgs() []string {
	return []string{"-u", fmt.Sprint(u.id), "-p", u.pw}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	t.Cleanup(cancel)
	return ctx
}

// next returns c's next delivery.
func next(t *testing.T, c *client.Client) codec.Delivery {
	t.Helper()
	return servertest.Next(t, c, waitLong)
}

// none asserts that c receives nothing for a short while.
func none(t *testing.T, c *client.Client) {
	t.Helper()
	servertest.None(t, c, 300*time.Millisecond)
}

// checkFor polls fn until it returns nil, failing the test after timeout.
func checkFor(t *testing.T, timeout time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %v: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// env is the environment of the binary: no colour unless asked for, and a
// private config directory for the history file.
func env(t *testing.T, extra ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "NO_COLOR", "TERM", "XDG_CONFIG_HOME", "HOME", PasswordEnv:
			continue
		}
		out = append(out, kv)
	}
	home := t.TempDir()
	out = append(out, "HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, "config"), "TERM=xterm")
	return append(out, extra...)
}

// syncBuffer collects a process's output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// result is a finished run of the binary.
type result struct {
	stdout, stderr string
	code           int
}

// runCC runs the binary with args and stdin to completion.
func runCC(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), runLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, args...)
	cmd.Env = env(t)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String(), code: cmd.ProcessState.ExitCode()}
	if ctx.Err() != nil {
		t.Fatalf("chatclient %q did not finish: %v\nstdout:\n%s\nstderr:\n%s", args, err, r.stdout, r.stderr)
	}
	t.Logf("chatclient %q -> %d\nstdout:\n%s\nstderr:\n%s", args, r.code, r.stdout, r.stderr)
	return r
}

// proc is a running chatclient in scripted mode whose stdin stays open.
type proc struct {
	t        *testing.T
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	out, err *syncBuffer
	done     chan struct{}
}

func startProc(t *testing.T, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, out: &syncBuffer{}, err: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(binPath, args...)
	p.cmd.Env = env(t)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.err
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		t.Logf("chatclient %q stdout:\n%s\nstderr:\n%s", args, p.out, p.err)
	})
	return p
}

func (p *proc) send(line string) {
	p.t.Helper()
	if _, err := io.WriteString(p.stdin, line+"\n"); err != nil {
		p.t.Fatalf("write %q: %v", line, err)
	}
}

// waitOut waits until stdout contains s.
func (p *proc) waitOut(s string) { p.t.Helper(); waitIn(p.t, p.out, s) }

// waitErr waits until stderr contains s.
func (p *proc) waitErr(s string) { p.t.Helper(); waitIn(p.t, p.err, s) }

func waitIn(t *testing.T, b *syncBuffer, s string) {
	t.Helper()
	checkFor(t, waitLong, func() error {
		if !strings.Contains(b.String(), s) {
			return fmt.Errorf("output has no %q; it is:\n%s", s, b)
		}
		return nil
	})
}

// exit waits for the process to end by itself and returns its status.
func (p *proc) exit() int {
	p.t.Helper()
	return waitExit(p.t, p.done, p.cmd)
}

// waitExit waits (at most runLimit) for cmd, whose waiter closes done, and
// returns its exit status.
func waitExit(t *testing.T, done <-chan struct{}, cmd *exec.Cmd) int {
	t.Helper()
	select {
	case <-done:
	case <-time.After(runLimit):
		t.Fatal("chatclient did not exit")
	}
	return cmd.ProcessState.ExitCode()
}

var ansiRE = regexp.MustCompile(`\x1b\[[0-9;?]*[A-Za-z]`)

// stripANSI removes escape sequences and carriage returns.
func stripANSI(s string) string {
	return strings.ReplaceAll(ansiRE.ReplaceAllString(s, ""), "\r", "")
}

var userIDRE = regexp.MustCompile(`userid is (\d+)`)

// waitAllAcked waits until the server has stored the acknowledgement of
// every message in uid's inbox. The server writes DELIVERED to the store in
// batches, and a login that overlaps such a write may be sent a message
// again (it is at-least-once), so tests that assert "not delivered again"
// wait for the write first.
func waitAllAcked(t *testing.T, ts *testServer, uid codec.UserID) {
	t.Helper()
	checkFor(t, waitLong, func() error {
		last, acked, err := ts.App.Store.InboxState(ctxT(t), uid)
		if err != nil || acked < last {
			return fmt.Errorf("inbox of %d: last %d, acked %d, err %v", uid, last, acked, err)
		}
		return nil
	})
}

// waitGroupAcked waits until the server has stored uid's acknowledgement of
// group gid's log through gseq (see waitAllAcked).
func waitGroupAcked(t *testing.T, ts *testServer, uid codec.UserID, gid codec.GroupID, gseq codec.Seq) {
	t.Helper()
	checkFor(t, waitLong, func() error {
		groups, err := ts.App.Store.UserGroups(ctxT(t), uid)
		if err != nil {
			return err
		}
		for _, g := range groups {
			if g.ID == gid {
				if g.Acked < gseq {
					return fmt.Errorf("group %d of %d: acked %d, want %d", gid, uid, g.Acked, gseq)
				}
				return nil
			}
		}
		return fmt.Errorf("%d is not in group %d", uid, gid)
	})
}
