package conf

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestPrecedence(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.yaml")
	os.WriteFile(path, []byte("listen: 127.0.0.1:7000\nmax-frame: 1000\nidle-timeout: 30s\nworkers: 5\nmax-message: 500\n"), 0o644)
	env := map[string]string{"CHAT_MAX_FRAME": "2000", "CHAT_WORKERS": "7"}
	c, err := Load([]string{"-config", path, "-workers", "9"}, func(k string) string { return env[k] }, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:7000" || c.MaxFrame != 2000 || c.Workers != 9 || c.IdleTimeout != 30*time.Second {
		t.Fatalf("got %+v", c)
	}
	if c.DB != "sqlite:chat.db" || c.OfflineCap != 500 || c.MemReleaseIdle != 5*time.Second || c.WriterPriority != 10 {
		t.Fatalf("defaults lost: %+v", c)
	}
}

func TestErrors(t *testing.T) {
	none := func(string) string { return "" }
	for _, args := range [][]string{{"-max-frame", "10"}, {"-bcrypt-cost", "99"}, {"-log-level", "loud"}, {"-nope"}, {"extra"},
		{"-offline-cap", "4097"}, {"-max-frame", "2097152", "-max-pending-bytes", "1048576"}, {"-max-pending-bytes", "2147483648", "-max-frame", "2147483648"},
		{"-redis", "r:6379", "-presence-lease", "0s"}, {"-redis", "r:6379", "-presence-lease", "-1s"},
		{"-redis", "r:6379", "-presence-lease", "500ms"}} {
		if _, err := Load(args, none, &strings.Builder{}); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
	path := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(path, []byte("no-such-option: 1\n"), 0o644)
	if _, err := Load([]string{"-config=" + path}, none, &strings.Builder{}); err == nil || !strings.Contains(err.Error(), "unknown option") {
		t.Errorf("unknown yaml key: %v", err)
	}
	if _, err := Load(nil, func(k string) string {
		if k == "CHAT_WORKERS" {
			return "many"
		}
		return ""
	}, &strings.Builder{}); err == nil || err.Error() != `conf: CHAT_WORKERS: "many" is not a whole number` {
		t.Errorf("bad env: %v", err)
	}
	// A refused YAML value is named, with what the option takes.
	os.WriteFile(path, []byte("idle-timeout: 90\n"), 0o644)
	if _, err := Load([]string{"-config=" + path}, none, &strings.Builder{}); err == nil ||
		!strings.Contains(err.Error(), `idle-timeout: "90" is not a duration such as 90s`) {
		t.Errorf("bad yaml duration: %v", err)
	}
}

// TestRateBurstDefault: rate-burst 0 or below means twice rate, as
// documented, whatever rate is.
func TestRateBurstDefault(t *testing.T) {
	none := func(string) string { return "" }
	for _, args := range [][]string{{"-rate-burst", "0"}, {"-rate", "50", "-rate-burst", "-1"}} {
		if _, err := Load(args, none, &strings.Builder{}); err != nil {
			t.Errorf("%v: %v", args, err)
		}
	}
	for _, args := range [][]string{{"-rate-burst", "0.5"}, {"-rate", "0.3"}} { // a bucket that never holds a request
		if _, err := Load(args, none, &strings.Builder{}); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
	if c, err := Load([]string{"-offline-cap", "4096"}, none, &strings.Builder{}); err != nil || c.OfflineCap != MaxOfflineCap {
		t.Errorf("offline-cap 4096: %d, %v", c.OfflineCap, err)
	}
}

// TestWriterPriority: the SQLite writer's priority comes from the
// environment or a flag like every option, and the flag wins.
func TestWriterPriority(t *testing.T) {
	env := map[string]string{"CHAT_WRITER_PRIORITY": "-1"}
	c, err := Load(nil, func(k string) string { return env[k] }, os.Stderr)
	if err != nil || c.WriterPriority != -1 {
		t.Fatalf("from the environment: %d, %v", c.WriterPriority, err)
	}
	c, err = Load([]string{"-writer-priority", "5"}, func(k string) string { return env[k] }, os.Stderr)
	if err != nil || c.WriterPriority != 5 {
		t.Fatalf("from the flag: %d, %v", c.WriterPriority, err)
	}
}

// TestLimits: the LOGIN_ACK budget and the caps have their documented
// defaults, and are set like every other option.
func TestLimits(t *testing.T) {
	none := func(string) string { return "" }
	c, err := Load(nil, none, &strings.Builder{})
	if err != nil || c.LoginGroupUsers != 1000 || c.LoginUsers != 10000 || c.MaxFriends != 5000 || c.MaxGroups != 1000 || c.MaxGroupMembers != 100000 ||
		c.PasswordWorkers != 0 {
		t.Fatalf("defaults: %+v, %v", c, err)
	}
	path := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(path, []byte("max-friends: 7\nlogin-users: 50\n"), 0o644)
	env := map[string]string{"CHAT_MAX_GROUPS": "8", "CHAT_LOGIN_GROUP_USERS": "20", "CHAT_PASSWORD_WORKERS": "3"}
	c, err = Load([]string{"-config", path, "-max-group-members", "9"}, func(k string) string { return env[k] }, &strings.Builder{})
	if err != nil || c.MaxFriends != 7 || c.LoginUsers != 50 || c.MaxGroups != 8 || c.LoginGroupUsers != 20 || c.MaxGroupMembers != 9 ||
		c.PasswordWorkers != 3 {
		t.Fatalf("set: %+v, %v", c, err)
	}
}

// TestMaxPendingBytesZeroIsDefault: max-pending-bytes 0 or below means
// the default, as for the other limits, with any max-frame; the check
// against max-frame applies to a value that was set.
func TestMaxPendingBytesZeroIsDefault(t *testing.T) {
	none := func(string) string { return "" }
	for _, args := range [][]string{{"-max-pending-bytes", "0"}, {"-max-pending-bytes", "-1"}, {"-max-pending-bytes", "0", "-max-frame", "2097152"}, {"-max-frame", "2097152"}} {
		if _, err := Load(args, none, &strings.Builder{}); err != nil {
			t.Errorf("%v: %v", args, err)
		}
	}
	env := map[string]string{"CHAT_MAX_PENDING_BYTES": "0"}
	if _, err := Load(nil, func(k string) string { return env[k] }, &strings.Builder{}); err != nil {
		t.Errorf("CHAT_MAX_PENDING_BYTES=0: %v", err)
	}
	if _, err := Load([]string{"-max-pending-bytes", "1000"}, none, &strings.Builder{}); err == nil {
		t.Error("max-pending-bytes 1000 below max-frame 65536 accepted")
	}
}
