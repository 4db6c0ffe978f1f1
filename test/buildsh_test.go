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
	if want := renderStream(string(tmpl), nodes, addr); !strings.HasSuffix(string(conf), want) {
		t.Fatalf("build.sh's nginx.conf:\n%s\ndoes not end with the stream block the tests render:\n%s", conf, want)
	}
	// Its ports are below the kernel's ephemeral range (where it leaves
	// room), so that no client connection, open or in TIME_WAIT, holds
	// one of them when a service binds it.
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if lo, err := strconv.Atoi(strings.Fields(string(b))[0]); err == nil && lo-1-20000 >= 1000 {
			for _, name := range []string{"node1", "node2", "redis", "mariadb", "nginx"} {
				b, err := os.ReadFile(filepath.Join(dir, "addr", name))
				if err != nil {
					t.Fatal(err)
				}
				a := strings.TrimSpace(string(b))
				port, err := strconv.Atoi(a[strings.LastIndexByte(a, ':')+1:])
				if err != nil || port < 20000 || port >= lo {
					t.Errorf("%s listens on %s: want a port in 20000-%d, below the ephemeral range", name, a, lo-1)
				}
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

// TestFreePortBelowEphemeralRange: the tests' services listen on ports
// that no client connection can be given meanwhile.
func TestFreePortBelowEphemeralRange(t *testing.T) {
	lo := ephemeralLow()
	room := lo-1-20000 >= 1000 // else freePort lets the kernel choose
	seen := map[int]bool{}
	for range 50 {
		p := freePort()
		if room && (p < 20000 || p >= lo || seen[p]) {
			t.Fatalf("freePort gave %d (seen before: %v), want a new port in 20000-%d", p, seen[p], lo-1)
		}
		seen[p] = true
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			t.Fatalf("freePort gave %d, which cannot be listened on: %v", p, err)
		}
		l.Close()
	}
}
