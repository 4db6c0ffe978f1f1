package pubsub

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
)

// lockedBuffer is a bytes.Buffer safe for concurrent writers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// After LogRedisTo, go-redis's own messages (here: a dial that failed
// every attempt) are lines of the node's logger, not stderr's.
func TestLogRedisTo(t *testing.T) {
	var out lockedBuffer
	LogRedisTo(slog.New(slog.NewJSONHandler(&out, nil)))
	t.Cleanup(func() { LogRedisTo(slog.Default()) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer c.Close()
	if err := c.Ping(context.Background()).Err(); err == nil {
		t.Fatal("ping to a closed port succeeded")
	}
	if got := out.String(); !strings.Contains(got, `"msg":"go-redis"`) || !strings.Contains(got, "failed to dial") {
		t.Errorf("logged %q: want go-redis's dial failure as a JSON line", got)
	}
}
