package server

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/service"
)

// conn is the per-connection state, kept small: no goroutine, no buffer of
// its own while idle (gnet releases its inbound buffer when drained).
type conn struct {
	srv  *Server
	gc   gnet.Conn
	sess *service.Session
	id   uint64

	// Owned by the event loop.
	tokens   float64
	lastFill int64

	lastActive atomic.Int64 // unix nanos of the last frame

	mu      sync.Mutex
	queue   []queued // frames waiting for a worker
	qbytes  int
	running bool // a worker owns the queue
	closed  bool
}

var _ service.Transport = (*conn)(nil)

// queued is a received frame waiting for a worker. A rate-limited frame is
// queued too, so that its errno 8 answer keeps the order of the responses.
type queued struct {
	frame   []byte
	limited bool
}

// Send implements service.Transport.
func (c *conn) Send(frame []byte) {
	_ = c.gc.AsyncWrite(frame, c.afterWrite)
}

// afterWrite runs on the event loop: it closes a connection whose client
// stopped reading.
func (c *conn) afterWrite(gc gnet.Conn, err error) error {
	if err == nil && gc.OutboundBuffered() > c.srv.cfg.MaxOutbound {
		c.srv.log.Warn("closing slow consumer", "conn", c.id, "outbound", gc.OutboundBuffered())
		return gc.Close()
	}
	return nil
}

// Close implements service.Transport.
func (c *conn) Close() { _ = c.gc.Close() }

var connIDs atomic.Uint64

// OnOpen implements gnet.EventHandler.
func (s *Server) OnOpen(gc gnet.Conn) ([]byte, gnet.Action) {
	if s.draining.Load() {
		return service.Reject(codec.ErrnoUnavailable, "server is shutting down"), gnet.Close
	}
	if s.nconns.Add(1) > int64(s.cfg.MaxConns) {
		s.nconns.Add(-1)
		return service.Reject(codec.ErrnoUnavailable, "server is full"), gnet.Close
	}
	c := &conn{srv: s, gc: gc, id: connIDs.Add(1), tokens: s.cfg.RateBurst, lastFill: time.Now().UnixNano()}
	c.lastActive.Store(c.lastFill)
	c.sess = s.node.Open(c)
	gc.SetContext(c)
	s.conns.add(c)
	return nil, gnet.None
}

// OnClose implements gnet.EventHandler.
func (s *Server) OnClose(gc gnet.Conn, _ error) gnet.Action {
	c, ok := gc.Context().(*conn)
	if !ok {
		return gnet.None
	}
	s.nconns.Add(-1)
	s.conns.remove(c)
	c.mu.Lock()
	c.closed = true
	dropped := len(c.queue)
	c.queue, c.qbytes = nil, 0
	c.mu.Unlock()
	s.inflight.Add(int64(-dropped))
	// The session ends on a worker: it may touch the store and the bus.
	go s.node.Closed(c.sess)
	return gnet.None
}

// OnTraffic implements gnet.EventHandler: decode every whole frame, queue it
// for a worker, answer framing errors and limits on the spot.
func (s *Server) OnTraffic(gc gnet.Conn) gnet.Action {
	c := gc.Context().(*conn)
	now := time.Now().UnixNano()
	for {
		// Peek the header first, then exactly one frame, so a burst of
		// pipelined frames is never copied as a whole.
		buf, err := gc.Peek(codec.HeaderLen)
		if err == nil {
			if total := codec.HeaderLen + codec.FrameLen(buf); total <= codec.HeaderLen+s.cfg.MaxFrame && gc.InboundBuffered() >= total {
				buf, _ = gc.Peek(total)
			}
		}
		body, n, err := codec.Decode(buf, s.cfg.MaxFrame)
		switch {
		case errors.Is(err, codec.ErrIncomplete):
			return gnet.None
		case errors.Is(err, codec.ErrFrameTooLarge):
			_, _ = gc.Write(service.Reject(codec.ErrnoFrameTooLarge, "frame too large"))
			return gnet.Close
		case errors.Is(err, codec.ErrEmptyFrame):
			_, _ = gc.Write(service.Reject(codec.ErrnoBadRequest, "empty frame"))
			return gnet.Close
		}
		c.lastActive.Store(now)
		if s.draining.Load() {
			_, _ = gc.Write(service.RejectRequest(body, codec.ErrnoUnavailable, "server is shutting down"))
			_, _ = gc.Discard(n)
			continue
		}
		admit := c.admit(now, len(body))
		if admit == queueFull {
			// Answered at once: it may overtake responses still queued.
			_, _ = gc.Write(service.RejectRequest(body, codec.ErrnoRateLimited, "rate limited: too many requests in flight"))
			_, _ = gc.Discard(n)
			continue
		}
		frame := make([]byte, len(body)) // the worker must not see gnet's buffer
		copy(frame, body)
		_, _ = gc.Discard(n)
		s.enqueue(c, queued{frame: frame, limited: admit == rateLimited})
	}
}

// Outcomes of admit.
const (
	admitted = iota
	rateLimited
	queueFull
)

// admit applies the pending limits, then the rate limit (a refused frame
// spends no token).
func (c *conn) admit(now int64, size int) int {
	cfg := &c.srv.cfg
	c.mu.Lock()
	full := len(c.queue) >= cfg.MaxPending || c.qbytes+size > cfg.MaxPendingBytes
	c.mu.Unlock()
	if full {
		return queueFull
	}
	if cfg.RatePerSec > 0 {
		c.tokens += float64(now-c.lastFill) / 1e9 * cfg.RatePerSec
		c.lastFill = now
		if c.tokens > cfg.RateBurst {
			c.tokens = cfg.RateBurst
		}
		if c.tokens < 1 {
			return rateLimited
		}
		c.tokens--
	}
	return admitted
}

func (s *Server) enqueue(c *conn, q queued) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.queue = append(c.queue, q)
	c.qbytes += len(q.frame)
	s.inflight.Add(1)
	schedule := !c.running
	c.running = true
	c.mu.Unlock()
	if schedule {
		s.schedule(c)
	}
}

// schedule hands c to the pool. The queue has room for every connection, so
// this never blocks; the fallback goroutine only guards against misuse.
func (s *Server) schedule(c *conn) {
	select {
	case s.work <- c:
	default:
		go func() { s.work <- c }()
	}
}

// framesPerTurn is how many frames a worker handles for one connection
// before letting others go first.
const framesPerTurn = 16

func (s *Server) worker() {
	defer s.workers.Done()
	for {
		select {
		case <-s.quit:
			return
		case c := <-s.work:
			s.serve(c)
		}
	}
}

// serve handles c's queued frames in order.
func (s *Server) serve(c *conn) {
	for i := 0; ; i++ {
		c.mu.Lock()
		if len(c.queue) == 0 || c.closed {
			c.running = false
			c.mu.Unlock()
			return
		}
		if i == framesPerTurn {
			c.mu.Unlock()
			s.schedule(c) // still running: requeue behind others
			return
		}
		q := c.queue[0]
		c.queue[0] = queued{}
		c.queue = c.queue[1:]
		if len(c.queue) == 0 {
			c.queue = nil // release the backing array while idle
		}
		c.qbytes -= len(q.frame)
		c.mu.Unlock()
		if q.limited {
			s.node.Refuse(c.sess, q.frame, codec.ErrnoRateLimited, "rate limited: too many requests per second")
		} else {
			s.node.Handle(c.sess, q.frame)
		}
		s.inflight.Add(-1)
	}
}

const regShards = 64

// registry holds every open connection, for the idle sweeper.
type registry struct {
	shards [regShards]struct {
		sync.Mutex
		m map[uint64]*conn
	}
}

func (r *registry) init() {
	for i := range r.shards {
		r.shards[i].m = map[uint64]*conn{}
	}
}

func (r *registry) add(c *conn) {
	sh := &r.shards[c.id%regShards]
	sh.Lock()
	sh.m[c.id] = c
	sh.Unlock()
}

func (r *registry) remove(c *conn) {
	sh := &r.shards[c.id%regShards]
	sh.Lock()
	delete(sh.m, c.id)
	sh.Unlock()
}

func (r *registry) each(fn func(*conn)) {
	for i := range r.shards {
		sh := &r.shards[i]
		sh.Lock()
		list := make([]*conn, 0, len(sh.m))
		for _, c := range sh.m {
			list = append(list, c)
		}
		sh.Unlock()
		for _, c := range list {
			fn(c)
		}
	}
}
