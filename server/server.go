// Package server is chatcluster's network layer: a gnet/v2 multi-reactor
// event loop that frames length-prefixed JSON, enforces per-connection
// limits and hands each decoded frame to a fixed worker pool, which runs the
// service handlers. Event loops never block: they decode, queue and write.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/service"
)

// Errors returned by Start and Stop.
var (
	// ErrStarted: Start was called twice.
	ErrStarted = errors.New("server: already started")
	// ErrNotStarted: Stop before Start.
	ErrNotStarted = errors.New("server: not started")
)

// Config configures a Server. Zero values mean the documented defaults.
type Config struct {
	// Listen is the TCP address: default 127.0.0.1:6000. Port 0 picks a
	// free port (see Addr).
	Listen string
	// MaxFrame is the largest accepted frame body: default 65536.
	MaxFrame int
	// MaxConns bounds open connections: default 100000.
	MaxConns int
	// IdleTimeout closes a connection that sent no frame for this long:
	// default 90 s. PING keeps a connection alive.
	IdleTimeout time.Duration
	// RatePerSec and RateBurst bound requests per connection (token
	// bucket): defaults 1000/s and 2000. Negative RatePerSec disables.
	RatePerSec float64
	RateBurst  float64
	// MaxPending bounds requests received but not yet handled on one
	// connection: default 256. Beyond it requests get errno 8.
	MaxPending int
	// MaxPendingBytes bounds their bytes (the inbound buffer): default 1 MiB,
	// or MaxFrame if that is more.
	MaxPendingBytes int
	// MaxOutbound closes a connection whose unsent output exceeds it (a
	// client that does not read): default 8 MiB. Nothing is lost: unread
	// deliveries stay in the inbox.
	MaxOutbound int
	// Workers is the size of the handler pool: default 256.
	Workers int
	// EventLoops: default DefaultEventLoops().
	EventLoops int
	// DrainTimeout bounds how long Stop waits for in-flight requests:
	// default 10 s.
	DrainTimeout time.Duration
	// MemReleaseIdle returns the memory freed by a burst of work (a login
	// storm, say) to the operating system once the process has been quiet
	// for this long: default 5 s, negative disables. See memReleaser.
	MemReleaseIdle time.Duration
	// Logger: default slog.Default().
	Logger *slog.Logger
}

// DefaultEventLoops is the number of gnet event loops a server runs unless
// told otherwise: one per CPU the process may use (GOMAXPROCS, which
// follows a container's CPU limit) but one, and at least one. An event loop
// waits in epoll_wait on its own thread and keeps its Go P while it
// waits; with a loop per CPU and GOMAXPROCS Ps, the loops could hold every
// P, and goroutines woken by the runtime's own network poller (answers
// from MariaDB and Redis) waited for sysmon, up to 10 ms. With 2 CPUs and
// 2 loops that put a two-node cluster at 1,000 msg/s into stretches where
// every round trip took up to 10 ms more (p99 53-65 ms); with one loop,
// p99 17-21 ms, and flat out no slower (docs/BENCHMARKS-history.md,
// "What bounds it", (c)).
func DefaultEventLoops() int { return max(1, runtime.GOMAXPROCS(0)-1) }

func (c *Config) setDefaults() {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:6000"
	}
	if c.MaxFrame <= 0 {
		c.MaxFrame = codec.DefaultMaxFrame
	}
	if c.MaxConns <= 0 {
		c.MaxConns = 100000
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 90 * time.Second
	}
	if c.RatePerSec == 0 {
		c.RatePerSec = 1000
	}
	if c.RateBurst <= 0 {
		c.RateBurst = 2 * c.RatePerSec
	}
	if c.MaxPending <= 0 {
		c.MaxPending = 256
	}
	if c.MaxPendingBytes <= 0 {
		c.MaxPendingBytes = max(1<<20, c.MaxFrame)
	}
	if c.MaxOutbound <= 0 {
		c.MaxOutbound = 8 << 20
	}
	if c.Workers <= 0 {
		c.Workers = 256
	}
	if c.EventLoops <= 0 {
		c.EventLoops = DefaultEventLoops()
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 10 * time.Second
	}
	if c.MemReleaseIdle == 0 {
		c.MemReleaseIdle = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Server is a running chat listener. Start, Addr and Stop are safe for
// concurrent use.
type Server struct {
	gnet.BuiltinEventEngine
	cfg  Config
	node *service.Node
	log  *slog.Logger

	eng      gnet.Engine
	addr     string
	booted   chan struct{}
	runErr   chan error
	started  atomic.Bool
	draining atomic.Bool

	conns    registry
	nconns   atomic.Int64
	inflight atomic.Int64 // frames queued or being handled
	work     chan *conn
	workers  sync.WaitGroup
	stopOnce sync.Once
	quit     chan struct{}
}

// New returns an unstarted server that hands requests to node.
func New(cfg Config, node *service.Node) *Server {
	cfg.setDefaults()
	s := &Server{
		cfg: cfg, node: node, log: cfg.Logger,
		booted: make(chan struct{}),
		runErr: make(chan error, 1),
		quit:   make(chan struct{}),
	}
	return s
}

// Start listens and serves in the background; it returns once the listener
// is up.
func (s *Server) Start() error {
	if !s.started.CompareAndSwap(false, true) {
		return ErrStarted
	}
	// Each connection has at most one entry in the work queue, so a queue
	// as long as MaxConns never blocks an event loop.
	s.work = make(chan *conn, s.cfg.MaxConns+1)
	for i := 0; i < s.cfg.Workers; i++ {
		s.workers.Add(1)
		go s.worker()
	}
	go func() {
		s.runErr <- gnet.Run(s, "tcp://"+s.cfg.Listen,
			gnet.WithMulticore(true),
			gnet.WithNumEventLoop(s.cfg.EventLoops),
			gnet.WithReuseAddr(true),
			gnet.WithTCPNoDelay(gnet.TCPNoDelay),
			gnet.WithTCPKeepAlive(time.Minute),
			gnet.WithLogger(gnetLogger{s.log}),
		)
	}()
	select {
	case <-s.booted:
	case err := <-s.runErr:
		close(s.quit)
		s.workers.Wait()
		return fmt.Errorf("server: listen %s: %w", s.cfg.Listen, bindError(s.cfg.Listen, err))
	}
	go s.sweep()
	s.log.Info("listening", "addr", s.addr, "event_loops", s.cfg.EventLoops, "workers", s.cfg.Workers)
	return nil
}

// bindError explains a failed start: gnet reports a port that is already
// taken as "setsockopt: bad file descriptor", so the address is tried once
// with the standard library, whose error says what is wrong ("address
// already in use", "permission denied"). Otherwise gnet's error stands.
func bindError(addr string, gnetErr error) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	ln.Close()
	return gnetErr
}

// Addr is the bound listen address (useful with port 0).
func (s *Server) Addr() string { return s.addr }

// OnBoot implements gnet.EventHandler.
func (s *Server) OnBoot(eng gnet.Engine) gnet.Action {
	s.eng = eng
	s.addr = s.cfg.Listen
	if fd, err := eng.Dup(); err == nil {
		if sa, err := unix.Getsockname(fd); err == nil {
			switch a := sa.(type) {
			case *unix.SockaddrInet4:
				s.addr = net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port))
			case *unix.SockaddrInet6:
				s.addr = net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port))
			}
		}
		unix.Close(fd)
	}
	close(s.booted)
	return gnet.None
}

// Stop shuts down gracefully: refuse new connections and frames, finish the
// requests already received, flush acknowledgements and writes, close every
// connection.
func (s *Server) Stop(ctx context.Context) error {
	if !s.started.Load() {
		return ErrNotStarted
	}
	var err error
	s.stopOnce.Do(func() {
		s.draining.Store(true)
		deadline := time.Now().Add(s.cfg.DrainTimeout)
		for (s.inflight.Load() > 0 || s.node.Busy()) && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
		if n := s.inflight.Load(); n > 0 {
			s.log.Warn("stopping with requests still in flight", "requests", n)
		}
		s.node.Close()
		err = s.eng.Stop(ctx)
		close(s.quit)
		s.workers.Wait()
		<-s.runErr
		s.log.Info("stopped", "addr", s.addr)
	})
	return err
}

// sweep closes idle connections, and returns memory to the operating
// system once the process turned quiet.
func (s *Server) sweep() {
	period := min(s.cfg.IdleTimeout/4, time.Second)
	t := time.NewTicker(period)
	defer t.Stop()
	var rel *memReleaser
	if s.cfg.MemReleaseIdle > 0 {
		rel = newMemReleaser(s.cfg.MemReleaseIdle, s.log)
	}
	var buf []*conn
	for {
		select {
		case <-s.quit:
			return
		case now := <-t.C:
			limit := now.Add(-s.cfg.IdleTimeout).UnixNano()
			buf = s.conns.each(buf, func(c *conn) {
				if c.lastActive.Load() < limit {
					c.gc.Close()
				}
			})
			if rel != nil {
				rel.tick(now)
			}
		}
	}
}

type gnetLogger struct{ l *slog.Logger }

func (g gnetLogger) Debugf(f string, a ...any) { g.l.Debug(fmt.Sprintf(f, a...), "src", "gnet") }
func (g gnetLogger) Infof(f string, a ...any)  { g.l.Debug(fmt.Sprintf(f, a...), "src", "gnet") }

// gnet's warnings and errors are one message each, so that the log's
// throttle counts them together, with gnet's text as "detail".
func (g gnetLogger) Warnf(f string, a ...any)  { g.l.Warn("gnet", "detail", fmt.Sprintf(f, a...)) }
func (g gnetLogger) Errorf(f string, a ...any) { g.l.Error("gnet", "detail", fmt.Sprintf(f, a...)) }
func (g gnetLogger) Fatalf(f string, a ...any) { g.l.Error("gnet", "detail", fmt.Sprintf(f, a...)) }
