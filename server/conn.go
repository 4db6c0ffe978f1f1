package server

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/service"
)

// conn is the per-connection state, kept small because one exists for every
// open connection: no goroutine, no buffer of its own while idle (gnet
// releases its inbound buffer when drained, serve drops the queue's backing
// array), the service session embedded rather than allocated apart, and the
// fields ordered to leave no padding (240 bytes, the top of its size class).
type conn struct {
	srv *Server
	gc  gnet.Conn

	// Owned by the event loop.
	tokens   float64
	lastFill int64

	lastActive atomic.Int64 // unix nanos of the last frame

	mu    sync.Mutex
	queue []queued // frames waiting for a worker
	out   [][]byte // frames waiting for the pending flush; guarded by mu

	// buffered is gnet's outbound buffer as the event loop last saw it
	// (after a flush, or for WaitOutbound); see Unsent.
	buffered atomic.Int32
	qbytes   int32 // bytes in queue (at most MaxPendingBytes and a frame); guarded by mu
	slot     int32 // index in its registry shard; guarded by the shard's lock
	shard    uint8 // registry shard, fixed at open
	running  bool  // a worker owns the queue; guarded by mu
	closed   bool  // guarded by mu
	flushing bool  // a flush of out is queued on the event loop; guarded by mu

	sess service.Session
}

var _ service.Transport = (*conn)(nil)

// queued is a received frame waiting for a worker. A rate-limited frame is
// queued too, so that its errno 8 answer keeps the order of the responses.
type queued struct {
	frame   []byte
	limited bool
}

// Send implements service.Transport. Frames sent while a flush is queued
// join it, so a burst to one connection (a commit's deliveries and ACKs)
// costs one writev and one event-loop task instead of one each.
func (c *conn) Send(frame []byte) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.out = append(c.out, frame)
	if c.flushing {
		c.mu.Unlock()
		return
	}
	c.flushing = true
	c.mu.Unlock()
	// Writing nothing costs no system call; the callback runs on the event
	// loop, where the connection may be written synchronously. The task is
	// queued even when waking the loop fails (the only error), so flush
	// still runs and clears flushing.
	_ = c.gc.AsyncWritev(nil, c.flush)
}

// maxIOV is Linux's IOV_MAX, the most buffers one writev(2) takes.
const maxIOV = 1024

// frameWriter is the part of gnet.Conn that flush writes with.
type frameWriter interface {
	Write(b []byte) (int, error)
	Writev(bs [][]byte) (int, error)
}

// writeFrames writes frames in order, at most maxIOV per writev(2): more
// is EINVAL, and gnet would close the connection. Later chunks join the
// outbound buffer if an earlier one could not be written whole.
func writeFrames(w frameWriter, frames [][]byte) error {
	for len(frames) > 0 {
		n := min(len(frames), maxIOV)
		var err error
		if n == 1 {
			_, err = w.Write(frames[0])
		} else {
			_, err = w.Writev(frames[:n])
		}
		if err != nil {
			return err
		}
		frames = frames[n:]
	}
	return nil
}

// flush runs on the event loop: it writes every frame sent so far, in
// order, then closes the connection if its client stopped reading.
func (c *conn) flush(gc gnet.Conn, err error) error {
	c.mu.Lock()
	out := c.out
	c.out, c.flushing = nil, false
	// Until seeBuffered below, Unsent counts what leaves out as buffered.
	c.buffered.Add(int32(min(frameBytes(out), math.MaxInt32/4)))
	c.mu.Unlock()
	if err != nil || len(out) == 0 {
		return nil // closed
	}
	err = writeFrames(gc, out)
	c.seeBuffered(gc)
	if err != nil {
		c.srv.log.Debug("write failed; connection closed", "fd", gc.Fd(), "err", err)
		return nil
	}
	if c.slowConsumer(gc) {
		return gc.Close()
	}
	return nil
}

// slowConsumer reports (and logs) whether gc's client has stopped reading:
// more than MaxOutbound bytes wait to be sent. Its caller closes gc.
func (c *conn) slowConsumer(gc gnet.Conn) bool {
	if gc.OutboundBuffered() <= c.srv.cfg.MaxOutbound {
		return false
	}
	c.srv.log.Warn("closing slow consumer", "fd", gc.Fd(), "remote", gc.RemoteAddr(), "outbound", gc.OutboundBuffered())
	return true
}

// seeBuffered records gc's outbound buffer for Unsent. On the event loop.
func (c *conn) seeBuffered(gc gnet.Conn) int {
	n := gc.OutboundBuffered()
	c.buffered.Store(int32(min(n, math.MaxInt32/2)))
	return n
}

// Unsent implements service.Transport: what waits for a flush (a few
// frames: the event loop flushes soon), and what the event loop last saw
// in gnet's outbound buffer. gnet writes that out without telling anyone,
// so it can be less by now, never more.
func (c *conn) Unsent() int {
	// buffered is read under mu, which flush holds while it moves out's
	// bytes into it: read before, a flush in between would hide them.
	c.mu.Lock()
	defer c.mu.Unlock()
	return int(c.buffered.Load()) + frameBytes(c.out)
}

// frameBytes is the length of frames together.
func frameBytes(frames [][]byte) int {
	n := 0
	for _, f := range frames {
		n += len(f)
	}
	return n
}

// WaitOutbound's polls of the event loop: the first after outboundPoll,
// then less often while the client reads nothing, up to outboundPollMax.
const (
	outboundPoll    = 5 * time.Millisecond
	outboundPollMax = 100 * time.Millisecond
)

// WaitOutbound implements service.Transport. gnet tells nobody when it has
// written its outbound buffer out, so it asks the event loop, every
// outboundPoll at first and less often while nothing moves. A client that
// takes nothing of what waits for IdleTimeout is closed as a slow
// consumer: it may keep its connection open with PINGs, but it would hold
// its pump and what waits for it for good. What it takes is seen in the
// socket's send queue too: gnet's buffer moves only once the kernel's has
// room for a good part of it, which a client reading slowly (but reading)
// may take longer than IdleTimeout to make.
func (c *conn) WaitOutbound(ctx context.Context, below int) error {
	type look struct{ buffered, total int }
	poll := outboundPoll
	least, since := -1, time.Now()
	for {
		c.mu.Lock()
		closed := c.closed
		c.mu.Unlock()
		if closed {
			return net.ErrClosed
		}
		ch := make(chan look, 1)
		if err := c.gc.AsyncWritev(nil, func(gc gnet.Conn, err error) error {
			if err != nil {
				ch <- look{-1, -1}
				return nil
			}
			n := c.seeBuffered(gc)
			ch <- look{n, n + kernelUnsent(gc.Fd())}
			return nil
		}); err != nil {
			return net.ErrClosed // the event loop is gone (the server stopped)
		}
		t := time.NewTimer(time.Second)
		select {
		case l := <-ch:
			t.Stop()
			switch {
			case l.buffered < 0:
				return net.ErrClosed
			case l.buffered < below:
				return nil
			case least < 0 || l.total < least:
				least, since, poll = l.total, time.Now(), outboundPoll // it moved
			case time.Since(since) >= c.srv.cfg.IdleTimeout:
				c.srv.log.Warn("closing slow consumer", "fd", c.gc.Fd(), "remote", c.gc.RemoteAddr(), "outbound", l.buffered,
					"reason", fmt.Sprintf("took nothing for %v", c.srv.cfg.IdleTimeout))
				_ = c.gc.Close()
				return net.ErrClosed
			default:
				poll = min(2*poll, outboundPollMax)
			}
		case <-t.C: // no answer: look at closed again
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
		t.Reset(poll)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

// Close implements service.Transport.
func (c *conn) Close() { _ = c.gc.Close() }

// OnOpen implements gnet.EventHandler.
func (s *Server) OnOpen(gc gnet.Conn) ([]byte, gnet.Action) {
	if s.draining.Load() {
		return service.Reject(codec.ErrnoUnavailable, "server is shutting down"), gnet.Close
	}
	if s.nconns.Add(1) > int64(s.cfg.MaxConns) {
		s.nconns.Add(-1)
		return service.Reject(codec.ErrnoUnavailable, "server is full"), gnet.Close
	}
	c := &conn{srv: s, gc: gc, tokens: s.cfg.RateBurst, lastFill: time.Now().UnixNano(), shard: uint8(gc.Fd() % regShards)}
	c.lastActive.Store(c.lastFill)
	s.node.Attach(&c.sess, c)
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
	go s.node.Closed(&c.sess)
	return gnet.None
}

// OnTraffic implements gnet.EventHandler: decode every whole frame, handle
// it on the spot when that cannot block (a chat message or a DELIVERED,
// service.HandleNow) or queue it for a worker, answer framing errors and
// limits on the spot.
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
			_, _ = gc.Write(service.Reject(codec.ErrnoFrameTooLarge, fmt.Sprintf("frame too large (max-frame %d bytes)", s.cfg.MaxFrame)))
			return gnet.Close
		case errors.Is(err, codec.ErrEmptyFrame):
			_, _ = gc.Write(service.Reject(codec.ErrnoBadRequest, "empty frame"))
			return gnet.Close
		}
		c.lastActive.Store(now)
		// Refusals are answered at once (they may overtake responses still
		// queued), within the same MaxOutbound as every other answer.
		if s.draining.Load() {
			_, _ = gc.Write(service.RejectRequest(body, codec.ErrnoUnavailable, "server is shutting down"))
			_, _ = gc.Discard(n)
			if c.slowConsumer(gc) {
				return gnet.Close
			}
			continue
		}
		admit := c.admit(now, len(body))
		if admit == queueFull {
			_, _ = gc.Write(service.RejectRequest(body, codec.ErrnoRateLimited, "rate limited: too many requests in flight"))
			_, _ = gc.Discard(n)
			if c.slowConsumer(gc) {
				return gnet.Close
			}
			continue
		}
		frame := make([]byte, len(body)) // the worker must not see gnet's buffer
		copy(frame, body)
		_, _ = gc.Discard(n)
		if admit == admitted && c.idle() && s.node.HandleNow(&c.sess, frame) {
			continue
		}
		s.enqueue(c, queued{frame: frame, limited: admit == rateLimited})
	}
}

// idle reports whether none of c's requests is queued or being handled:
// then the event loop may handle the next one itself (service.HandleNow)
// without overtaking an earlier one. Only the event loop queues requests,
// so c stays idle until it queues one.
func (c *conn) idle() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.running && !c.closed
}

// Outcomes of admit.
const (
	admitted = iota
	rateLimited
	queueFull
)

// admit applies the pending limits, then the rate limit (a refused frame
// spends no token). A frame is never refused for its bytes when none are
// pending: a limit below the frame's size would refuse it at every retry.
func (c *conn) admit(now int64, size int) int {
	cfg := &c.srv.cfg
	c.mu.Lock()
	full := len(c.queue) >= cfg.MaxPending || (c.qbytes > 0 && int(c.qbytes)+size > cfg.MaxPendingBytes)
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
	c.qbytes += int32(len(q.frame))
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

// workerIdle is how long a worker that served requests waits idle before
// it hands over to a fresh goroutine.
const workerIdle = 2 * time.Second

// worker serves connections until Stop. A worker that served requests and
// then sat idle for a whole workerIdle period hands its place to a fresh
// goroutine and exits: the stack it grew for the work (a login's bcrypt and
// SQLite calls take it to 32 KiB) is freed instead of being kept by an idle
// goroutine, which for the whole pool is several MiB. The pool keeps its
// size; the new goroutine takes over the old one's count in s.workers.
func (s *Server) worker() {
	t := time.NewTimer(workerIdle)
	defer t.Stop()
	served, recently := false, false
	for {
		select {
		case <-s.quit:
			s.workers.Done()
			return
		case c := <-s.work:
			s.serve(c)
			served, recently = true, true
		case <-t.C:
			if served && !recently {
				s.log.Debug("idle worker handed over to a fresh goroutine")
				go s.worker()
				return
			}
			recently = false
			t.Reset(workerIdle)
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
		c.qbytes -= int32(len(q.frame))
		c.mu.Unlock()
		if q.limited {
			s.node.Refuse(&c.sess, q.frame, codec.ErrnoRateLimited, "rate limited: too many requests per second")
		} else {
			s.node.Handle(&c.sess, q.frame)
		}
		s.inflight.Add(-1)
	}
}

const regShards = 64

// registry holds every open connection, for the idle sweeper. Each shard is
// a dense slice (a connection knows its slot), which costs less per
// connection than a map and gives its memory back as connections close.
type registry struct {
	shards [regShards]struct {
		sync.Mutex
		conns []*conn
	}
}

func (r *registry) add(c *conn) {
	sh := &r.shards[c.shard]
	sh.Lock()
	c.slot = int32(len(sh.conns))
	sh.conns = append(sh.conns, c)
	sh.Unlock()
}

func (r *registry) remove(c *conn) {
	sh := &r.shards[c.shard]
	sh.Lock()
	last := len(sh.conns) - 1
	moved := sh.conns[last]
	sh.conns[c.slot], moved.slot = moved, c.slot
	sh.conns[last] = nil
	sh.conns = sh.conns[:last]
	if cap(sh.conns) > 64 && len(sh.conns) < cap(sh.conns)/4 {
		sh.conns = append([]*conn(nil), sh.conns...) // shrink after a wave of closes
	}
	sh.Unlock()
}

// each calls fn for every connection, outside the shard locks. buf is
// scratch space for the caller to pass again; it is returned cleared.
func (r *registry) each(buf []*conn, fn func(*conn)) []*conn {
	for i := range r.shards {
		sh := &r.shards[i]
		sh.Lock()
		buf = append(buf[:0], sh.conns...)
		sh.Unlock()
		for _, c := range buf {
			fn(c)
		}
		clear(buf) // do not keep closed connections alive
	}
	return buf[:0]
}
