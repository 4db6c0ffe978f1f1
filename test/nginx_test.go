package test

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestNginxQueuesAReconnectStorm: when a node dies, all of its clients
// reconnect through nginx at once. Connections beyond nginx's accept queue
// are dropped by the kernel, and each of those clients then waits for TCP's
// SYN retransmit (1 s, then 3 s) before it can log in again: with nginx's
// default queue (511) a failover of 900 users had a tenth or more of them
// back only after ~1.1 s (BENCHMARKS.md, case 7). With nginx's worker
// stopped, so that nothing is accepted, every connection of a storm of
// 1,000 must still complete its handshake: the deployed config's queue
// holds them.
func TestNginxQueuesAReconnectStorm(t *testing.T) {
	needCluster(t)
	storm := 1000
	if b, err := os.ReadFile("/proc/sys/net/core/somaxconn"); err == nil {
		// Linux caps every accept queue at somaxconn (4096 by default
		// since 5.4): a kernel with less cannot queue the whole storm,
		// and at 511 or less nginx's default queue is as long as ours.
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && n < storm {
			if n <= 511 {
				t.Skipf("net.core.somaxconn is %d: every accept queue is that short, whatever nginx asks for", n)
			}
			storm = n
		}
	}
	c := &cluster{t: t, dir: t.TempDir()}
	// nginx connects to an upstream only for a connection it accepted:
	// this one is never reached.
	c.nodes = []*service{{name: "node1", addr: "127.0.0.1:" + strconv.Itoa(freePort())}}
	c.startNginx()
	worker := childOf(t, c.nginx.cmd.Process.Pid)
	if err := syscall.Kill(worker, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// Before nginx's own cleanup (stop): a stopped worker would not exit.
	t.Cleanup(func() { _ = syscall.Kill(worker, syscall.SIGCONT) })

	var (
		mu       sync.Mutex
		conns    []net.Conn
		failed   int
		firstErr error
		wg       sync.WaitGroup
	)
	for range storm {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A connection the queue has no room for never completes
			// while the worker is stopped: its SYNs are dropped at 0, 1
			// and 3 s. 2 s leaves room for a loaded machine.
			nc, err := net.DialTimeout("tcp", c.nginx.addr, 2*time.Second)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if failed++; firstErr == nil {
					firstErr = err
				}
				return
			}
			conns = append(conns, nc)
		}()
	}
	wg.Wait()
	for _, nc := range conns {
		nc.Close()
	}
	if failed > 0 {
		t.Fatalf("%d of %d connections to nginx, not accepting, never completed (first: %v): its accept queue is shorter than a reconnect storm (listen ... backlog= in deploy/nginx/chatcluster-stream.conf)", failed, storm, firstErr)
	}
}

// childOf returns the pid of a child process of pid (nginx's one worker).
func childOf(t *testing.T, pid int) int {
	t.Helper()
	var child int
	checkFor(t, 10*time.Second, func() error {
		stats, _ := filepath.Glob("/proc/[0-9]*/stat")
		for _, p := range stats {
			b, err := os.ReadFile(p)
			if err != nil {
				continue // gone meanwhile
			}
			// pid (comm) state ppid ...: comm may hold spaces, not ")".
			s := string(b)
			f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
			if len(f) > 1 && f[1] == strconv.Itoa(pid) {
				child, _ = strconv.Atoi(filepath.Base(filepath.Dir(p)))
				return nil
			}
		}
		return os.ErrNotExist
	})
	return child
}
