// Package servertest starts real chatserver instances (the whole App: store,
// bus, services, listener) on random loopback ports, for the tests of any
// package. Each Server has its own SQLite file.
package servertest

import (
	"context"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatcluster/chatcluster/client"
	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/conf"
	"github.com/chatcluster/chatcluster/server"
)

// Server is a running test chatserver. Its methods must be called from the
// test's goroutine.
type Server struct {
	tb   testing.TB
	Cfg  conf.Config
	App  *server.App // nil while stopped
	Addr string      // host:port, the same across restarts
	logs *logBuffer
}

// Start runs a server with test defaults (port 0, a temporary SQLite file,
// bcrypt cost 4, warnings logged to the test), changed by mutate if not nil.
// It is stopped when the test ends.
func Start(tb testing.TB, mutate func(*conf.Config)) *Server {
	tb.Helper()
	cfg := conf.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.DB = "sqlite:" + filepath.Join(tb.TempDir(), "chat.db")
	cfg.BcryptCost = 4 // tests only; the default is 10
	cfg.LogLevel = "warn"
	if mutate != nil {
		mutate(&cfg)
	}
	s := &Server{tb: tb, Cfg: cfg, logs: &logBuffer{}}
	s.Start()
	tb.Cleanup(s.Stop)
	return s
}

// Start starts a stopped server again, on the same address and database.
func (s *Server) Start() {
	s.tb.Helper()
	var w io.Writer = logWriter{s.tb, s.logs}
	if _, ok := s.tb.(*testing.B); ok {
		w = io.Discard
	}
	app, err := server.Open(context.Background(), s.Cfg, s.Cfg.Logger(w))
	if err != nil {
		s.tb.Fatalf("start server: %v", err)
	}
	s.App, s.Addr = app, app.Server.Addr()
	s.Cfg.Listen = s.Addr // restarts reuse the port so clients find it again
}

// Stop shuts the server down gracefully; it does nothing when stopped.
func (s *Server) Stop() {
	if s.App == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := s.App.Close(ctx); err != nil {
		s.tb.Errorf("stop server: %v", err)
	}
	s.App = nil
}

// Logged reports whether the server logged a line containing text (at the
// configured level, warn by default) since it was first started.
func (s *Server) Logged(text string) bool {
	s.logs.mu.Lock()
	defer s.logs.mu.Unlock()
	return strings.Contains(s.logs.b.String(), text)
}

type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

type logWriter struct {
	tb   testing.TB
	logs *logBuffer
}

func (w logWriter) Write(p []byte) (int, error) {
	w.tb.Logf("%s", p)
	w.logs.mu.Lock()
	w.logs.b.Write(p)
	w.logs.mu.Unlock()
	return len(p), nil
}

// CheckFor polls fn until it returns nil, failing the test with fn's last
// error when timeout passes.
func CheckFor(tb testing.TB, timeout time.Duration, fn func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = fn(); err == nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	tb.Fatalf("condition not met after %v: %v", timeout, err)
}

// Next returns c's next delivery, failing the test when the connection ends
// or nothing arrives within timeout.
func Next(tb testing.TB, c *client.Client, timeout time.Duration) codec.Delivery {
	tb.Helper()
	select {
	case d, ok := <-c.Deliveries():
		if !ok {
			tb.Fatalf("connection ended: %v", c.Err())
		}
		return d
	case <-time.After(timeout):
		tb.Fatalf("no delivery within %v", timeout)
	}
	return codec.Delivery{}
}

// None fails the test if c receives a delivery within wait.
func None(tb testing.TB, c *client.Client, wait time.Duration) {
	tb.Helper()
	select {
	case d := <-c.Deliveries():
		tb.Fatalf("unexpected delivery %+v", d)
	case <-time.After(wait):
	}
}
