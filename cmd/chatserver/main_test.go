package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBinaryDefaultsAndSignals runs the real binary with no configuration
// but a port, as `go run ./cmd/chatserver` would: it creates chat.db in the
// working directory, serves with one event loop fewer than CPUs (counted
// before GOMAXPROCS gets the SQLite writer's P), and exits 0 on SIGTERM and
// on SIGINT.
func TestBinaryDefaultsAndSignals(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "chatserver")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := l.Addr().String()
		l.Close()
		cmd := exec.Command(bin, "-listen", addr, "-bcrypt-cost", "4")
		cmd.Dir = dir
		var stderr bytes.Buffer
		cmd.Stderr = io.MultiWriter(os.Stderr, &stderr)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var c net.Conn
		deadline := time.Now().Add(20 * time.Second)
		for {
			var err error
			if c, err = net.Dial("tcp", addr); err == nil {
				break
			}
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				t.Fatalf("server did not listen: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		body := []byte(`{"msgid":4,"name":"user` + strconv.Itoa(int(sig)) + `","password":"secret1"}`)
		c.Write(binary.BigEndian.AppendUint32(nil, uint32(len(body))))
		c.Write(body)
		var hdr [4]byte
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			t.Fatal(err)
		}
		resp := make([]byte, binary.BigEndian.Uint32(hdr[:]))
		io.ReadFull(c, resp)
		var m map[string]any
		if json.Unmarshal(resp, &m); m["errno"] != float64(0) || m["id"] == nil {
			t.Fatalf("signup: %s", resp)
		}
		cmd.Process.Signal(sig)
		if err := cmd.Wait(); err != nil {
			t.Fatalf("exit after %v: %v", sig, err)
		}
		c.Close()
		if want := fmt.Sprintf("event_loops=%d ", max(1, runtime.GOMAXPROCS(0)-1)); !strings.Contains(stderr.String(), want) {
			t.Errorf("log has no %q:\n%s", want, stderr.String())
		}
		if _, err := os.Stat(filepath.Join(dir, "chat.db")); err != nil {
			t.Fatalf("default database not created: %v", err)
		}
	}
}

func TestMaxProcs(t *testing.T) {
	for _, c := range []struct {
		env             string
		def, loops, out int
		sqlite          bool
	}{
		{"", 2, 2, 3, false}, // one P more than the event loops
		{"", 8, 2, 8, false}, // more CPUs than loops: the default
		{"", 2, 1, 2, false},
		{"", 2, 1, 3, true}, // SQLite: a P more for the writer
		{"", 2, 2, 4, true},
		{"", 8, 2, 8, true}, // Ps to spare: the default
		{"", 8, 7, 9, true},
		{"3", 2, 2, 3, true}, // GOMAXPROCS set: kept
		{"1", 4, 4, 1, false},
		{"x", 2, 2, 3, false}, // not a number: ignored
		{"0", 2, 2, 3, false},
	} {
		if got := maxProcs(c.env, c.def, c.loops, c.sqlite); got != c.out {
			t.Errorf("maxProcs(%q, %d, %d, %v) = %d, want %d", c.env, c.def, c.loops, c.sqlite, got, c.out)
		}
	}
}

// TestSetMaxProcs checks that the event loops a node runs by default are
// counted before GOMAXPROCS is raised, not from the raised value.
func TestSetMaxProcs(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	runtime.GOMAXPROCS(2)
	log := slog.New(slog.DiscardHandler)
	noEnv := func(string) string { return "" }
	if loops := setMaxProcs(noEnv, 0, "sqlite:chat.db", log); loops != 1 || runtime.GOMAXPROCS(0) != 3 {
		t.Errorf("2 CPUs, SQLite: %d event loops, GOMAXPROCS %d; want 1 and 3", loops, runtime.GOMAXPROCS(0))
	}
	runtime.GOMAXPROCS(2)
	if loops := setMaxProcs(noEnv, 0, "mysql:u:p@tcp(127.0.0.1:3306)/chat", log); loops != 1 || runtime.GOMAXPROCS(0) != 2 {
		t.Errorf("2 CPUs, MySQL: %d event loops, GOMAXPROCS %d; want 1 and 2", loops, runtime.GOMAXPROCS(0))
	}
	runtime.GOMAXPROCS(2)
	if loops := setMaxProcs(noEnv, 2, "sqlite:chat.db", log); loops != 2 || runtime.GOMAXPROCS(0) != 4 {
		t.Errorf("-event-loops 2, SQLite: %d event loops, GOMAXPROCS %d; want 2 and 4", loops, runtime.GOMAXPROCS(0))
	}
}

func TestGCSettings(t *testing.T) {
	env := func(kv ...string) func(string) string {
		return func(k string) string {
			for i := 0; i+1 < len(kv); i += 2 {
				if kv[i] == k {
					return kv[i+1]
				}
			}
			return ""
		}
	}
	for _, c := range []struct {
		name    string
		getenv  func(string) string
		ram     uint64
		percent int
		limit   int64
	}{
		{"defaults", env(), 8 << 30, defaultGCPercent, 4 << 30},
		{"GOGC set", env("GOGC", "100"), 8 << 30, -1, 4 << 30},
		{"GOGC off", env("GOGC", "off"), 8 << 30, -1, 4 << 30},
		{"GOMEMLIMIT set", env("GOMEMLIMIT", "1GiB"), 8 << 30, defaultGCPercent, -1},
		{"both set", env("GOGC", "50", "GOMEMLIMIT", "1GiB"), 8 << 30, -1, -1},
		{"RAM unknown", env(), 0, defaultGCPercent, -1},
	} {
		p, l := gcSettings(c.getenv, c.ram)
		if p != c.percent || l != c.limit {
			t.Errorf("%s: gcSettings = %d, %d; want %d, %d", c.name, p, l, c.percent, c.limit)
		}
	}
}

func TestCgroupLimit(t *testing.T) {
	files := func(m map[string]string) func(string) ([]byte, error) {
		return func(name string) ([]byte, error) {
			if v, ok := m[name]; ok {
				return []byte(v), nil
			}
			return nil, os.ErrNotExist
		}
	}
	for _, c := range []struct {
		name  string
		fs    map[string]string
		limit uint64
		ok    bool
	}{
		{"no cgroup files", nil, 0, false},
		{"v2, no limit", map[string]string{"/proc/self/cgroup": "0::/system.slice/chat.service\n",
			"/sys/fs/cgroup/system.slice/chat.service/memory.max": "max\n"}, 0, false},
		{"v2, own limit", map[string]string{"/proc/self/cgroup": "0::/system.slice/chat.service\n",
			"/sys/fs/cgroup/system.slice/chat.service/memory.max": "1073741824\n",
			"/sys/fs/cgroup/system.slice/memory.max":              "max\n"}, 1 << 30, true},
		{"v2, a parent's lower limit", map[string]string{"/proc/self/cgroup": "0::/a/b\n",
			"/sys/fs/cgroup/a/b/memory.max": "4294967296", "/sys/fs/cgroup/a/memory.max": "2147483648"}, 2 << 30, true},
		{"v2 in a container (cgroup root)", map[string]string{"/proc/self/cgroup": "0::/\n",
			"/sys/fs/cgroup/memory.max": "536870912\n"}, 512 << 20, true},
		{"v1", map[string]string{"/proc/self/cgroup": "12:memory:/docker/x\n",
			"/sys/fs/cgroup/memory/memory.limit_in_bytes": "268435456\n"}, 256 << 20, true},
	} {
		got, ok := cgroupLimit(files(c.fs))
		if got != c.limit || ok != c.ok {
			t.Errorf("%s: cgroupLimit = %d, %v; want %d, %v", c.name, got, ok, c.limit, c.ok)
		}
	}
}
