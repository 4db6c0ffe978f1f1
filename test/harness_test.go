// Package test holds chatcluster's cluster tests: real chatserver processes
// behind a real nginx (stream), sharing a private MariaDB and Redis that the
// tests start, kill and restart themselves.
package test

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"
)

var (
	binDir   string // holds the chatserver and chatbench binaries built by TestMain
	mariadb  *service
	skipWhy  string
	mysqlDSN string // admin DSN of the private MariaDB (no database)
)

func TestMain(m *testing.M) {
	code := run(m)
	os.Exit(code)
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "chatcluster-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if missing := missingTools(); missing != "" {
		if os.Getenv("CHAT_REQUIRE_SERVICES") == "1" {
			fmt.Fprintf(os.Stderr, "CHAT_REQUIRE_SERVICES=1 but %s\n", missing)
			return 1
		}
		skipWhy = missing
		return m.Run()
	}
	binDir = filepath.Join(dir, "bin")
	build := exec.Command("go", "build", "-o", binDir+"/", "../cmd/chatserver", "../cmd/chatbench")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build chatserver and chatbench:", err)
		return 1
	}
	mariadb, err = startMariaDB(filepath.Join(dir, "mariadb"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "start MariaDB:", err)
		return 1
	}
	defer mariadb.stop()
	return m.Run()
}

// missingTools names a missing service binary, or returns "".
func missingTools() string {
	for _, tool := range []string{"mariadbd", "mariadb-install-db", "redis-server", "nginx"} {
		if _, err := lookPath(tool); err != nil {
			return tool + " is not installed"
		}
	}
	if _, err := os.Stat(streamModule()); err != nil {
		return "the nginx stream module is not installed"
	}
	return ""
}

func lookPath(tool string) (string, error) {
	if p, err := exec.LookPath(tool); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin"} {
		if p := filepath.Join(d, tool); fileExists(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", tool)
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func streamModule() string {
	if p := os.Getenv("CHAT_TEST_NGINX_STREAM_MODULE"); p != "" {
		return p
	}
	return "/usr/lib/nginx/modules/ngx_stream_module.so"
}

func needCluster(t *testing.T) {
	t.Helper()
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
}

// Ports freePort has handed out, so that two services never get the same.
var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

// freePort returns a loopback port that was free a moment ago. Like
// build.sh, it picks from outside the kernel's ephemeral range (below it,
// or else above it, within 20000-60000) where that leaves room: a client
// connection (chatbench's, another test's) can take an ephemeral port
// between this check and the service's bind, and after a benchmark run
// tens of thousands of them wait in TIME_WAIT.
func freePort() int {
	portsMu.Lock()
	defer portsMu.Unlock()
	if lo, hi, ok := portRange(); ok {
		for range 1000 {
			p := lo + rand.IntN(hi-lo+1)
			if portsGiven[p] {
				continue
			}
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
			if err != nil {
				continue // in use
			}
			l.Close()
			portsGiven[p] = true
			return p
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err) // the loopback interface is gone: nothing can work
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// portRange is the part of 20000-60000 below the kernel's ephemeral range,
// or else above it, as build.sh's port_range; ok is false when neither has
// 1,000 ports (or the range cannot be read).
func portRange() (lo, hi int, ok bool) {
	const pmin, pmax = 20000, 60000
	elo, ehi, ok := ephemeralRange()
	switch {
	case !ok:
		return 0, 0, false
	case elo-1 <= pmax && elo-1-pmin >= 1000:
		return pmin, elo - 1, true
	case ehi+1 >= pmin && pmax-(ehi+1) >= 1000:
		return ehi + 1, pmax, true
	}
	return 0, 0, false
}

// ephemeralRange is the kernel's ephemeral port range.
func ephemeralRange() (lo, hi int, ok bool) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0, false
	}
	lo, err1 := strconv.Atoi(f[0])
	hi, err2 := strconv.Atoi(f[1])
	return lo, hi, err1 == nil && err2 == nil
}

// service is one child process (MariaDB, Redis, nginx or a chatserver node)
// that can be stopped, killed and started again with the same arguments.
type service struct {
	name string
	path string
	args []string
	log  string
	addr string // host:port it listens on
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

func (s *service) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	f, err := os.OpenFile(s.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.path, s.args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); f.Close(); close(done) }()
	s.cmd, s.done = cmd, done
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", s.addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("%s exited at start-up; log %s:\n%s", s.name, s.log, tail(s.log))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not listen on %s; log:\n%s", s.name, s.addr, tail(s.log))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// signal sends sig to the process group and waits for the exit.
func (s *service) signal(sig syscall.Signal) {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	syscall.Kill(-cmd.Process.Pid, sig)
	select {
	case <-done:
	case <-time.After(40 * time.Second):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

func (s *service) stop() { s.signal(syscall.SIGTERM) }
func (s *service) kill() { s.signal(syscall.SIGKILL) }

func (s *service) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd != nil
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func startMariaDB(dir string) (*service, error) {
	datadir := filepath.Join(dir, "data")
	if err := os.MkdirAll(datadir, 0o755); err != nil {
		return nil, err
	}
	installDB, _ := lookPath("mariadb-install-db")
	mariadbd, _ := lookPath("mariadbd")
	var userArgs []string
	if os.Geteuid() == 0 {
		userArgs = []string{"--user=root"}
	}
	install := exec.Command(installDB, append([]string{"--no-defaults", "--datadir=" + datadir,
		"--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve"}, userArgs...)...)
	if out, err := install.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("mariadb-install-db: %v\n%s", err, out)
	}
	sock := filepath.Join(dir, "mysql.sock")
	port := freePort()
	s := &service{
		name: "mariadbd", path: mariadbd, log: filepath.Join(dir, "mariadb.log"),
		addr: "127.0.0.1:" + strconv.Itoa(port),
		args: append([]string{"--no-defaults", "--datadir=" + datadir, "--socket=" + sock,
			"--port=" + strconv.Itoa(port), "--bind-address=127.0.0.1", "--pid-file=" + filepath.Join(dir, "mysql.pid"),
			"--skip-name-resolve", "--innodb-buffer-pool-size=128M", "--max-connections=500",
			"--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci",
			"--log-error=" + filepath.Join(dir, "mariadb.err")}, userArgs...),
	}
	if err := s.start(); err != nil {
		return nil, fmt.Errorf("%w\n%s", err, tail(filepath.Join(dir, "mariadb.err")))
	}
	admin, err := sql.Open("mysql", "root@unix("+sock+")/")
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	for _, q := range []string{
		"CREATE USER IF NOT EXISTS 'chat'@'127.0.0.1' IDENTIFIED BY 'chat'",
		"GRANT ALL PRIVILEGES ON *.* TO 'chat'@'127.0.0.1'",
	} {
		if _, err := admin.Exec(q); err != nil {
			return nil, fmt.Errorf("%s: %w", q, err)
		}
	}
	mysqlDSN = "chat:chat@tcp(" + s.addr + ")/"
	return s, nil
}

// newDatabase creates a fresh database for one test and returns the
// chatserver -db value.
func newDatabase(t *testing.T) string {
	t.Helper()
	admin, err := sql.Open("mysql", mysqlDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	name := fmt.Sprintf("chat_%d", time.Now().UnixNano())
	if _, err := admin.Exec("CREATE DATABASE " + name + " CHARACTER SET utf8mb4"); err != nil {
		t.Fatal(err)
	}
	return "mysql:" + mysqlDSN + name
}

// cluster is N chatserver nodes behind nginx, with a private Redis.
type cluster struct {
	t     *testing.T
	dir   string
	db    string
	redis *service
	nodes []*service
	nginx *service
}

// startCluster starts Redis, n nodes and nginx for one test.
func startCluster(t *testing.T, n int) *cluster {
	t.Helper()
	needCluster(t)
	c := &cluster{t: t, dir: t.TempDir(), db: newDatabase(t)}
	redisServer, _ := lookPath("redis-server")
	rport := freePort()
	c.redis = &service{name: "redis", path: redisServer, log: filepath.Join(c.dir, "redis.log"),
		addr: "127.0.0.1:" + strconv.Itoa(rport),
		args: []string{"--port", strconv.Itoa(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", c.dir}}
	if err := c.redis.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.redis.kill)
	for i := 0; i < n; i++ {
		c.addNode()
	}
	c.startNginx()
	return c
}

func (c *cluster) addNode() *service {
	c.t.Helper()
	i := len(c.nodes) + 1
	port := freePort()
	node := &service{
		name: fmt.Sprintf("node%d", i), path: filepath.Join(binDir, "chatserver"),
		log: filepath.Join(c.dir, fmt.Sprintf("node%d.log", i)), addr: "127.0.0.1:" + strconv.Itoa(port),
		args: []string{"-listen", "127.0.0.1:" + strconv.Itoa(port), "-db", c.db, "-redis", c.redis.addr,
			"-node-id", fmt.Sprintf("node%d", i), "-bcrypt-cost", "4", "-presence-lease", "3s", "-log-level", "info"},
	}
	if err := node.start(); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() {
		node.stop()
		if c.t.Failed() {
			c.t.Logf("----- %s log -----\n%s", node.name, tail(node.log))
		}
	})
	c.nodes = append(c.nodes, node)
	return node
}

// startNginx renders deploy/nginx/chatcluster-stream.conf for the nodes and
// runs nginx in the foreground of its own prefix directory.
func (c *cluster) startNginx() {
	c.t.Helper()
	tmpl, err := os.ReadFile("../deploy/nginx/chatcluster-stream.conf")
	if err != nil {
		c.t.Fatal(err)
	}
	var upstreams []string
	for _, n := range c.nodes {
		upstreams = append(upstreams, n.addr)
	}
	port := freePort()
	listen := "127.0.0.1:" + strconv.Itoa(port)
	stream, err := renderStream(string(tmpl), upstreams, listen)
	if err != nil {
		c.t.Fatal(err)
	}
	prefix := filepath.Join(c.dir, "nginx")
	os.MkdirAll(filepath.Join(prefix, "logs"), 0o755)
	conf := fmt.Sprintf("load_module %s;\ndaemon off;\nmaster_process on;\nworker_processes 1;\npid %s/nginx.pid;\nerror_log %s/error.log info;\nevents { worker_connections 16384; }\n%s",
		streamModule(), prefix, prefix, stream)
	confPath := filepath.Join(prefix, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		c.t.Fatal(err)
	}
	nginx, _ := lookPath("nginx")
	c.nginx = &service{name: "nginx", path: nginx, log: filepath.Join(prefix, "stdout.log"), addr: listen,
		args: []string{"-p", prefix, "-c", confPath, "-e", filepath.Join(prefix, "error.log")}}
	if err := c.nginx.start(); err != nil {
		c.t.Fatalf("%v\n%s", err, tail(filepath.Join(prefix, "error.log")))
	}
	c.t.Cleanup(c.nginx.stop)
}

// renderStream replaces the template's example upstream servers (lines
// marked ##NODES##) with one line per node and sets the listen address
// (the line marked ##LISTEN##, its options kept), as build.sh cluster up
// does; like it, it refuses a template without both markers.
func renderStream(tmpl string, nodes []string, listen string) (string, error) {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(tmpl))
	emitted, listened := false, false
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasSuffix(line, "##NODES##"):
			if emitted {
				continue
			}
			emitted = true
			fields := strings.Fields(strings.TrimSuffix(line, "##NODES##"))
			if len(fields) < 2 {
				return "", fmt.Errorf("bad ##NODES## line: %q", line)
			}
			for _, n := range nodes {
				fields[1] = n
				out = append(out, "        "+strings.Join(fields, " "))
			}
		case strings.HasSuffix(line, "##LISTEN##"):
			listened = true
			fields := strings.Fields(strings.TrimSuffix(line, "##LISTEN##"))
			if len(fields) < 2 {
				return "", fmt.Errorf("bad ##LISTEN## line: %q", line)
			}
			if strings.HasSuffix(fields[1], ";") {
				fields[1] = listen + ";"
			} else {
				fields[1] = listen
			}
			out = append(out, "        "+strings.Join(fields, " "))
		default:
			out = append(out, line)
		}
	}
	if !emitted || !listened {
		return "", errors.New("the template has no line marked ##NODES## or none marked ##LISTEN##")
	}
	return strings.Join(out, "\n") + "\n", nil
}

// checkFor polls fn until it returns nil or timeout passes.
func checkFor(t *testing.T, timeout time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = fn(); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("condition not met after %v: %v", timeout, err)
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
