package conf

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// A warning or error with the same message passes once an interval; the
// next one through says how many were dropped. Other messages, and
// records below Warn, are not held back; loggers derived with With share
// the count.
func TestThrottle(t *testing.T) {
	var out bytes.Buffer
	clock := time.Unix(1000, 0)
	log := slog.New(newThrottle(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug}),
		time.Second, func() time.Time { return clock }))
	node := log.With("node", "n1")
	for range 5 {
		log.Warn("request failed", "op", "send")
		node.Warn("request failed", "op", "login")
		log.Info("login")
	}
	log.Error("publish failed")
	clock = clock.Add(999 * time.Millisecond)
	log.Warn("request failed")
	clock = clock.Add(time.Millisecond)
	node.Warn("request failed", "op", "send")
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	count := func(sub string) (n int) {
		for _, l := range lines {
			if strings.Contains(l, sub) {
				n++
			}
		}
		return n
	}
	if n := count("msg=\"request failed\""); n != 2 {
		t.Errorf("%d request failed lines, want 2 (one a second):\n%s", n, out.String())
	}
	if !strings.Contains(lines[len(lines)-1], "node=n1 op=send suppressed=10") {
		t.Errorf("last line %q: want the node's attributes and suppressed=10", lines[len(lines)-1])
	}
	if n := count("msg=login"); n != 5 {
		t.Errorf("%d info lines, want all 5", n)
	}
	if n := count("publish failed"); n != 1 {
		t.Errorf("%d publish failed lines, want 1", n)
	}
}

// Config.Logger throttles: a flood of one warning comes out as one line.
func TestLoggerThrottles(t *testing.T) {
	var out bytes.Buffer
	c := Default()
	c.LogFormat = "json"
	log := c.Logger(&out)
	for range 100 {
		log.Warn("group commit failed")
	}
	if n := strings.Count(out.String(), "\n"); n != 1 {
		t.Errorf("%d lines for 100 warnings within a second, want 1", n)
	}
}
