package conf

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// A warning or error with the same level and message passes once an
// interval; the next one through says how many were dropped, or a summary
// does once the interval is over. Other messages and levels, and records
// below Warn, are not held back; loggers derived with With share the
// count.
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
	for range 4 {
		log.Error("publish failed")
	}
	log.Error("request failed") // another level: not held back by the warnings
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
	if n := count("level=WARN msg=\"request failed\""); n != 2 {
		t.Errorf("%d request failed warnings, want 2 (one a second):\n%s", n, out.String())
	}
	if n := count("level=ERROR msg=\"request failed\""); n != 1 {
		t.Errorf("%d request failed errors, want 1", n)
	}
	if !strings.Contains(lines[len(lines)-1], "node=n1 op=send suppressed=10") {
		t.Errorf("last line %q: want the node's attributes and suppressed=10", lines[len(lines)-1])
	}
	if n := count("msg=login"); n != 5 {
		t.Errorf("%d info lines, want all 5", n)
	}
	// The 3 dropped of a message that did not come again are reported
	// once its second is over and something is logged.
	if n := count("publish failed"); n != 2 || count(`level=ERROR msg="publish failed" node=n1 suppressed=3`) != 1 {
		t.Errorf("publish failed lines: want the first and a summary with suppressed=3:\n%s", out.String())
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
