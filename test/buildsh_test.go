package test

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chatcluster/chatcluster/client"
	"github.com/chatcluster/chatcluster/codec"
)

// buildSh runs ./build.sh with args for the cluster in dir and returns its
// stdout; its stderr goes to the test log when it fails.
func buildSh(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("./build.sh", args...)
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "CHAT_CLUSTER_DIR="+dir, "CHAT_BCRYPT_COST=4")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if err != nil {
		t.Logf("./build.sh %s: %v\n%s", strings.Join(args, " "), err, errOut.String())
	}
	return out.String(), err
}

// TestBuildShCluster: the documented local cluster commands. "cluster up"
// gives the address of nginx, through which a user signs up and logs in;
// "cluster restart" brings a node back on its address, stopped or killed,
// with the data kept; "cluster down" stops everything.
func TestBuildShCluster(t *testing.T) {
	needCluster(t)
	dir := filepath.Join(t.TempDir(), "cluster")
	out, err := buildSh(t, dir, "cluster", "up", "2")
	t.Cleanup(func() { _, _ = buildSh(t, dir, "cluster", "down") })
	if err != nil {
		t.Fatal("cluster up failed")
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	addr := lines[len(lines)-1]
	// build.sh renders the stream template as the cluster tests do (the
	// listen options, such as the accept queue, kept).
	tmpl, err := os.ReadFile("../deploy/nginx/chatcluster-stream.conf")
	if err != nil {
		t.Fatal(err)
	}
	var nodes []string
	for _, name := range []string{"node1", "node2"} {
		b, err := os.ReadFile(filepath.Join(dir, "addr", name))
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, strings.TrimSpace(string(b)))
	}
	conf, err := os.ReadFile(filepath.Join(dir, "nginx", "nginx.conf"))
	if err != nil {
		t.Fatal(err)
	}
	want, err := renderStream(string(tmpl), nodes, addr)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(string(conf), want) {
		t.Fatalf("build.sh's nginx.conf:\n%s\ndoes not end with the stream block the tests render:\n%s", conf, want)
	}
	// Its ports are outside the kernel's ephemeral range (where that
	// leaves room), so that no client connection, open or in TIME_WAIT,
	// holds one of them when a service binds it.
	if lo, hi, ok := portRange(); ok {
		for _, name := range []string{"node1", "node2", "redis", "mariadb", "nginx"} {
			b, err := os.ReadFile(filepath.Join(dir, "addr", name))
			if err != nil {
				t.Fatal(err)
			}
			a := strings.TrimSpace(string(b))
			port, err := strconv.Atoi(a[strings.LastIndexByte(a, ':')+1:])
			if err != nil || port < lo || port > hi {
				t.Errorf("%s listens on %s: want a port in %d-%d, outside the ephemeral range", name, a, lo, hi)
			}
		}
	}
	pidOf := func(name string) int {
		b, err := os.ReadFile(filepath.Join(dir, "pids", name+".pid"))
		if err != nil {
			t.Fatal(err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatal(err)
		}
		return pid
	}
	login := func(id codec.UserID) error { // through nginx, on whichever node
		c, err := client.Dial(ctxT(t, 5*time.Second), addr, client.Options{})
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Login(ctxT(t, 5*time.Second), id, "password")
		return err
	}
	c, err := client.Dial(ctxT(t, 5*time.Second), addr, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	id, err := c.Signup(ctxT(t, 5*time.Second), "alice", "password")
	c.Close()
	if err != nil {
		t.Fatal(err)
	}

	old := pidOf("node1")
	if _, err := buildSh(t, dir, "cluster", "restart", "node1"); err != nil {
		t.Fatal("cluster restart node1 failed")
	}
	if pidOf("node1") == old {
		t.Fatal("node1 has the same pid after a restart")
	}
	if err := syscall.Kill(pidOf("node2"), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if _, err := buildSh(t, dir, "cluster", "status"); err == nil {
		t.Fatal("cluster status exits 0 with node2 killed")
	}
	if _, err := buildSh(t, dir, "cluster", "restart", "node2"); err != nil {
		t.Fatal("cluster restart node2 after a kill -9 failed")
	}
	status, err := buildSh(t, dir, "cluster", "status")
	if err != nil {
		t.Fatalf("cluster status after the restarts: %v\n%s", err, status)
	}
	for _, name := range []string{"node1", "node2", "nginx", "redis", "mariadb"} {
		if !strings.Contains(status, name) {
			t.Fatalf("cluster status lists no %s:\n%s", name, status)
		}
	}
	for range 4 { // nginx spreads the logins over both nodes
		checkFor(t, 20*time.Second, func() error { return login(id) })
	}

	if _, err := buildSh(t, dir, "cluster", "down"); err != nil {
		t.Fatal("cluster down failed")
	}
	_, err = buildSh(t, dir, "cluster", "status")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("cluster status after down: %v, want exit status 3", err)
	}
	if login(id) == nil {
		t.Fatalf("a login through %s after cluster down", addr)
	}
}

// TestFreePortOutsideEphemeralRange: the tests' services listen on ports
// that no client connection can be given meanwhile.
func TestFreePortOutsideEphemeralRange(t *testing.T) {
	lo, hi, room := portRange() // without room freePort lets the kernel choose
	seen := map[int]bool{}
	for range 50 {
		p := freePort()
		if room && (p < lo || p > hi || seen[p]) {
			t.Fatalf("freePort gave %d (seen before: %v), want a new port in %d-%d", p, seen[p], lo, hi)
		}
		seen[p] = true
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			t.Fatalf("freePort gave %d, which cannot be listened on: %v", p, err)
		}
		l.Close()
	}
}

// TestRenderStream: the template's listen line keeps its options whatever
// their shape, and a template without its markers is refused.
func TestRenderStream(t *testing.T) {
	nodes := []string{"127.0.0.1:1", "127.0.0.1:2"}
	const up = "    upstream u {\n        server 127.0.0.1:6001 weight=1 max_fails=2; ##NODES##\n        server 127.0.0.1:6002 weight=1 max_fails=2; ##NODES##\n    }\n"
	for _, c := range []struct{ line, want string }{
		{"listen 127.0.0.1:8000; ##LISTEN##", "listen 127.0.0.1:9; ##x"},
		{"listen 127.0.0.1:8000 backlog=4096; ##LISTEN##", "listen 127.0.0.1:9 backlog=4096; ##x"},
		{"listen [::]:8000 ssl;##LISTEN##", "listen 127.0.0.1:9 ssl; ##x"},
		{"\tlisten\t8000 reuseport backlog=4096 so_keepalive=on; ##LISTEN##", "listen 127.0.0.1:9 reuseport backlog=4096 so_keepalive=on; ##x"},
	} {
		got, err := renderStream(up+c.line+"\n", nodes, "127.0.0.1:9")
		if err != nil {
			t.Fatalf("%q: %v", c.line, err)
		}
		want := strings.TrimSuffix(c.want, " ##x")
		if !strings.Contains(got, "        "+want+"\n") || !strings.Contains(got, "server 127.0.0.1:2 weight=1 max_fails=2;") {
			t.Errorf("%q rendered as:\n%s\nwant the line %q and both servers", c.line, got, want)
		}
	}
	for _, tmpl := range []string{up + "listen 8000;\n", "listen 8000; ##LISTEN##\n", up + "##LISTEN##\n"} {
		if got, err := renderStream(tmpl, nodes, "127.0.0.1:9"); err == nil {
			t.Errorf("template %q rendered without an error:\n%s", tmpl, got)
		}
	}
}
