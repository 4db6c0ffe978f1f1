package main

import (
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/chatcluster/chatcluster/server"
)

// TestBinaryDefaultsAndSignals runs the real binary with no configuration
// but a port, as `go run ./cmd/chatserver` would: it creates chat.db in the
// working directory, serves, and exits 0 on SIGTERM and on SIGINT.
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
		cmd.Stderr = os.Stderr
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
		if _, err := os.Stat(filepath.Join(dir, "chat.db")); err != nil {
			t.Fatalf("default database not created: %v", err)
		}
	}
}

func TestMaxProcs(t *testing.T) {
	for _, c := range []struct {
		env             string
		def, loops, out int
	}{
		{"", 2, 2, 3}, // one P more than the event loops
		{"", 8, 2, 8}, // more CPUs than loops: the default
		{"", 2, 1, 2},
		{"3", 2, 2, 3}, // GOMAXPROCS set: kept
		{"1", 4, 4, 1},
		{"x", 2, 2, 3}, // not a number: ignored
		{"0", 2, 2, 3},
		{"", 1, 0, server.DefaultEventLoops() + 1}, // event loops by default
	} {
		if got := maxProcs(c.env, c.def, c.loops); got != c.out {
			t.Errorf("maxProcs(%q, %d, %d) = %d, want %d", c.env, c.def, c.loops, got, c.out)
		}
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
