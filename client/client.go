// Package client is a Go client for the chatcluster wire protocol (see
// package codec): it multiplexes concurrent requests over one TCP connection
// by "reqid", and hands the server's deliveries to the application in
// order, deduplicated, acknowledging them with DELIVERED. A delivery is
// numbered in one of two streams: the user's inbox (Seq: one-to-one
// messages) or a group's log (GSeq, per GroupID: group messages); each
// stream is deduplicated and acknowledged on its own.
//
// A Client owns exactly two goroutines (a reader and a writer) and no timers
// unless Options.PingInterval is set, so a process can hold many thousands
// of them. The package has no global state. Every exported method of Client
// is safe for concurrent use by multiple goroutines.
package client

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chatcluster/chatcluster/codec"
)

// Defaults applied by Dial to zero (or negative) Options fields.
const (
	DefaultDeliveryBuffer = 1024
	// DefaultMaxFrame is the default Options.MaxFrame.
	DefaultMaxFrame    = 16 << 20
	DefaultDialTimeout = 5 * time.Second
)

const (
	readBufSize   = 4096     // bufio.Reader size; larger frames get their own buffer
	maxKeptWrite  = 64 << 10 // write buffers above this are not kept for reuse
	maxFreeChans  = 4        // per-client free list of response channels
	silenceFactor = 3        // with pings: close after silenceFactor*PingInterval of silence
	idPrefixBytes = 6        // random bytes in the clientmsgid prefix
	deliveredCap  = 40       // enough for {"msgid":12,"seq":<int64>}
	// groupDeliveredCap is enough for
	// {"msgid":12,"groupid":<int64>,"gseq":<int64>}.
	groupDeliveredCap = 80
)

// Options configures Dial. The zero value is usable. Options is a plain value;
// Dial copies it.
type Options struct {
	// MaxRequest is the largest request frame body the client sends: a
	// larger request fails at once, unsent, with an error wrapping
	// ErrRequestTooLarge. (The server answers a frame above its max-frame
	// with errno 9 and closes the connection: it cannot tell which request
	// that was.) Once logged in, the client also keeps to the max-frame
	// the server names in LOGIN_ACK where that is smaller. Default
	// codec.DefaultMaxFrame, the server's default max-frame; set it to the
	// server's max-frame where that is raised.
	MaxRequest int
	// MaxFrame is the largest frame body accepted from the server; a larger
	// one closes the connection with an error wrapping ErrProtocol. Default
	// DefaultMaxFrame (16 MiB): a LOGIN_ACK carrying offline messages can be
	// far larger than the server's request limit.
	MaxFrame int
	// ManualAck disables automatic acknowledgement: the application must call
	// Client.Ack (for a delivery with Seq) or Client.AckGroup (for one with
	// GSeq) after it has processed a delivery. By default a delivery is
	// acknowledged as soon as it has been put into the Deliveries channel.
	ManualAck bool
	// DeliveryBuffer is the capacity of the Deliveries channel. Default 1024.
	// Login and LoginToken return only after the LOGIN_ACK's offline
	// messages are in the channel, so with more offline messages than
	// DeliveryBuffer (up to the server's offline-cap, 500 by default) the
	// channel must be read concurrently with the login call.
	// The buffer is allocated up front (about 90 bytes per slot), so programs
	// holding thousands of clients should choose a small value.
	DeliveryBuffer int
	// DialTimeout bounds the TCP connect. Default 5s.
	DialTimeout time.Duration
	// PingInterval, when positive, makes the client send a PING (without
	// reqid) every PingInterval, and close the connection with an error
	// wrapping os.ErrDeadlineExceeded when nothing at all has been received
	// for 3*PingInterval. Zero disables both.
	PingInterval time.Duration
	// OnUnsolicited, when not nil, is called from the reader goroutine for
	// each server message that is neither a delivery, a KICKED, nor the
	// response to a pending request: e.g. an ACK without reqid for input the
	// server could not attribute, or a response that arrived after its
	// request was abandoned. It must not block and must not call Close;
	// r.Body is owned by the callee. PONGs to keep-alive pings are not
	// reported.
	OnUnsolicited func(r Response)
}

// Response is one server response as returned by Client.Do. It is a plain
// value: once returned it is owned by the caller and is not touched by the
// Client again.
type Response struct {
	// Header holds the response's msgid and the echoed reqid.
	Header codec.Header
	// Errno and ErrMsg are the response's "errno" and "errmsg" (zero when
	// absent, as in PONG).
	Errno  codec.Errno
	ErrMsg string
	// Ack is the "ack" field of an ACK response: the msgid it answers.
	Ack codec.MsgID
	// Body is the complete JSON object of the response.
	Body []byte
}

// Decode unmarshals the response body into v, typically a pointer to a codec
// response struct (codec.Ack, codec.LoginAck, ...).
func (r Response) Decode(v any) error { return json.Unmarshal(r.Body, v) }

// Err returns nil when Errno is codec.OK, else a *ServerError. reqMsg is the
// msgid of the request, used as ServerError.Ack when the response is not an
// ACK (pass 0 if unknown).
func (r Response) Err(reqMsg codec.MsgID) error {
	if r.Errno == codec.OK {
		return nil
	}
	ack := reqMsg
	if r.Header.MsgID == codec.MsgAck && r.Ack != 0 {
		ack = r.Ack
	}
	return &ServerError{Ack: ack, Errno: r.Errno, ErrMsg: r.ErrMsg}
}

// Client is one connection to a chatcluster server. Create it with Dial and
// release it with Close. All methods are safe for concurrent use.
type Client struct {
	conn net.Conn
	opts Options

	// Reader goroutine state (touched only by the reader).
	br       *bufio.Reader
	lastRead time.Time // last time the read deadline was pushed back

	// Pending requests.
	nextReqID atomic.Uint64
	pmu       sync.Mutex
	pending   map[uint64]chan Response
	free      []chan Response

	// Write queue, drained by the writer goroutine.
	qmu   sync.Mutex
	queue []byte
	spare []byte // writer-owned buffer swapped with queue
	wake  chan struct{}

	// Deliveries and acknowledgements.
	deliveries chan codec.Delivery
	lastSeq    atomic.Int64 // highest seq handed out (or set by SetLastSeq)
	user       atomic.Int64 // user of the last successful login
	serverMax  atomic.Int64 // the server's max-frame, from LOGIN_ACK; 0 until known
	ackReset   atomic.Bool  // the writer must forget ackSent (new user)
	ackWant    atomic.Int64 // highest seq the server should be told about
	ackSent    int64        // writer-owned: highest seq sent in DELIVERED

	// Group-log deliveries and acknowledgements, per group. Maps are
	// allocated on first use.
	gmu      sync.Mutex
	gseqs    map[codec.GroupID]codec.Seq // highest gseq handed out (or set by SetGroupSeqs)
	gdone    map[codec.GroupID]codec.Seq // highest gseq the application has processed, as far as we know
	gackWant map[codec.GroupID]codec.Seq // DELIVERED still to be sent, taken by the writer
	gackSent map[codec.GroupID]codec.Seq // highest gseq sent in DELIVERED

	// clientmsgid generation.
	msgPrefix string
	msgCount  atomic.Uint64

	// Shutdown.
	failOnce sync.Once
	err      error         // cause; written once before closing is closed
	closing  chan struct{} // closed as soon as the connection is failing
	kicked   chan struct{} // closed when KICKED arrives
	done     chan struct{} // closed when both goroutines have exited
	running  atomic.Int32  // goroutines still running
}

// Dial connects to addr (host:port) and starts the client's goroutines. ctx
// bounds only the connect. The returned Client is safe for concurrent use.
func Dial(ctx context.Context, addr string, opts Options) (*Client, error) {
	if opts.MaxFrame <= 0 {
		opts.MaxFrame = DefaultMaxFrame
	}
	if opts.MaxRequest <= 0 {
		opts.MaxRequest = codec.DefaultMaxFrame
	}
	if opts.DeliveryBuffer <= 0 {
		opts.DeliveryBuffer = DefaultDeliveryBuffer
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = DefaultDialTimeout
	}
	d := net.Dialer{Timeout: opts.DialTimeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	return newClient(conn, opts), nil
}

func newClient(conn net.Conn, opts Options) *Client {
	var prefix [idPrefixBytes]byte
	_, _ = rand.Read(prefix[:]) // crypto/rand.Read never fails
	c := &Client{
		conn:       conn,
		opts:       opts,
		pending:    make(map[uint64]chan Response),
		wake:       make(chan struct{}, 1),
		deliveries: make(chan codec.Delivery, opts.DeliveryBuffer),
		msgPrefix:  hex.EncodeToString(prefix[:]) + "-",
		closing:    make(chan struct{}),
		kicked:     make(chan struct{}),
		done:       make(chan struct{}),
	}
	c.br = bufio.NewReaderSize((*connReader)(c), readBufSize)
	c.running.Store(2)
	go c.readLoop()
	go c.writeLoop()
	return c
}

// Deliveries returns the channel of messages delivered to the logged-in user,
// without duplicates: those with a Seq (the inbox) in seq order, and those
// with a GSeq (group messages, numbered in their group's log) in gseq order
// within each group. After a successful Login or LoginToken, the LOGIN_ACK's
// offline messages are in the channel before the call returns, ahead of any
// later live delivery; each group's backlog follows LOGIN_ACK as ordinary
// deliveries, so it may still be arriving then. The channel is closed when
// the connection ends. The client never drops a delivery: while the channel
// is full it stops reading from the connection.
func (c *Client) Deliveries() <-chan codec.Delivery { return c.deliveries }

// LastSeq returns the highest delivery seq put into the Deliveries channel
// (or set by SetLastSeq); it is at least the seq of every delivery already
// received from the channel, and final once Done is closed. Safe for
// concurrent use.
func (c *Client) LastSeq() codec.Seq { return codec.Seq(c.lastSeq.Load()) }

// SetLastSeq carries deduplication state over from a previous Client of the
// same user: deliveries with seq <= seq are dropped (and, without ManualAck,
// acknowledged to the server). Call it before Login/LoginToken with the old
// client's LastSeq (with ManualAck: the highest seq the application has
// processed, and then call Ack with it after logging in). Calling it while
// deliveries are arriving is safe but makes the dedup point racy. Group
// messages numbered by gseq have their own state: see SetGroupSeqs.
func (c *Client) SetLastSeq(seq codec.Seq) { c.lastSeq.Store(int64(seq)) }

// Ack tells the server that every delivery with seq <= seq has been
// processed. It is needed only with Options.ManualAck (without it, it is
// harmless). seq is clamped to LastSeq; acknowledgements are cumulative and
// coalesced, and sent by the writer goroutine without waiting for a
// response. Ack never blocks and is a no-op once the connection is closed.
// It covers only deliveries with Seq; see AckGroup for group messages.
func (c *Client) Ack(seq codec.Seq) {
	if last := c.LastSeq(); seq > last {
		seq = last
	}
	c.requestAck(int64(seq))
}

func (c *Client) requestAck(seq int64) {
	for {
		cur := c.ackWant.Load()
		if seq <= cur {
			return
		}
		if c.ackWant.CompareAndSwap(cur, seq) {
			break
		}
	}
	c.signal()
}

// GroupSeqs returns, for each group, the highest gseq of that group put into
// the Deliveries channel (or set by SetGroupSeqs): LastSeq for group
// messages. For each group it is at least the gseq of every delivery of
// that group already received from the channel, and it is final once Done
// is closed. Groups without any are absent. The map is a fresh copy, owned
// by the caller. Safe for concurrent use.
func (c *Client) GroupSeqs() map[codec.GroupID]codec.Seq {
	c.gmu.Lock()
	defer c.gmu.Unlock()
	m := make(map[codec.GroupID]codec.Seq, len(c.gseqs))
	for gid, gseq := range c.gseqs {
		if gseq > 0 {
			m[gid] = gseq
		}
	}
	return m
}

// SetGroupSeqs is SetLastSeq for group messages: it carries deduplication
// state over from a previous Client of the same user. For each group in
// seqs, deliveries of that group with gseq <= seqs[group] are dropped. It
// replaces whatever group state was set or received before, and does not
// keep seqs. Call it before Login/LoginToken with the old client's
// GroupSeqs; with ManualAck, pass the highest gseq the application has
// processed in each group.
//
// The server re-sends a group's unacknowledged backlog after LOGIN_ACK; the
// client acknowledges every duplicate it drops (with ManualAck, only those
// at or below what SetGroupSeqs or AckGroup declared processed), so the
// server learns of messages processed on an earlier connection whose
// acknowledgement was lost. Calling it while deliveries are arriving is
// safe but makes the dedup point racy. Safe for concurrent use.
func (c *Client) SetGroupSeqs(seqs map[codec.GroupID]codec.Seq) {
	c.gmu.Lock()
	defer c.gmu.Unlock()
	clear(c.gseqs)
	clear(c.gdone)
	for gid, gseq := range seqs {
		if gseq > 0 {
			putSeq(&c.gseqs, gid, gseq)
			putSeq(&c.gdone, gid, gseq)
		}
	}
}

// AckGroup is Ack for group messages: it tells the server that every
// delivery of group gid with gseq <= gseq has been processed. It is needed
// only with Options.ManualAck (without it, it is harmless). gseq is clamped
// to GroupSeqs()[gid]; acknowledgements are cumulative per group and
// coalesced, and sent by the writer goroutine without waiting for a
// response. AckGroup never blocks and is a no-op once the connection is
// closed. Safe for concurrent use.
func (c *Client) AckGroup(gid codec.GroupID, gseq codec.Seq) {
	c.gmu.Lock()
	if last := c.gseqs[gid]; gseq > last {
		gseq = last
	}
	queued := false
	if gseq > 0 {
		if gseq > c.gdone[gid] {
			putSeq(&c.gdone, gid, gseq)
		}
		queued = c.wantGroupAckLocked(gid, gseq, false)
	}
	c.gmu.Unlock()
	if queued {
		c.signal()
	}
}

// wantGroupAckLocked asks the writer to send DELIVERED for group gid
// through gseq, unless a value at least as high is already waiting or,
// without force, was already sent. It reports whether the writer must be
// woken. c.gmu must be held.
func (c *Client) wantGroupAckLocked(gid codec.GroupID, gseq codec.Seq, force bool) bool {
	if gseq <= c.gackWant[gid] || (!force && gseq <= c.gackSent[gid]) {
		return false
	}
	putSeq(&c.gackWant, gid, gseq)
	return true
}

// putSeq sets (*m)[gid] to gseq, making the map on first use.
func putSeq(m *map[codec.GroupID]codec.Seq, gid codec.GroupID, gseq codec.Seq) {
	if *m == nil {
		*m = make(map[codec.GroupID]codec.Seq)
	}
	(*m)[gid] = gseq
}

// requestGroupAck is wantGroupAckLocked for callers not holding c.gmu.
func (c *Client) requestGroupAck(gid codec.GroupID, gseq codec.Seq, force bool) {
	c.gmu.Lock()
	queued := c.wantGroupAckLocked(gid, gseq, force)
	c.gmu.Unlock()
	if queued {
		c.signal()
	}
}

// appendGroupAcks appends one DELIVERED frame per group with an
// acknowledgement waiting, and forgets them. Called by the writer only.
func (c *Client) appendGroupAcks(dst []byte) []byte {
	c.gmu.Lock()
	defer c.gmu.Unlock()
	if len(c.gackWant) == 0 {
		return dst
	}
	for gid, gseq := range c.gackWant {
		dst = appendGroupDelivered(dst, gid, gseq)
		if gseq > c.gackSent[gid] {
			putSeq(&c.gackSent, gid, gseq)
		}
	}
	clear(c.gackWant)
	return dst
}

// resetGroups forgets all group dedup and acknowledgement state (a login
// as another user).
func (c *Client) resetGroups() {
	c.gmu.Lock()
	clear(c.gseqs)
	clear(c.gdone)
	clear(c.gackWant)
	clear(c.gackSent)
	c.gmu.Unlock()
}

// Kicked returns a channel closed when the server sent KICKED (the session
// was taken over by another login). The connection is then closed and Err
// wraps ErrKicked. Safe for concurrent use.
func (c *Client) Kicked() <-chan struct{} { return c.kicked }

// Done returns a channel closed when the connection has ended and the
// client's goroutines have exited. Safe for concurrent use.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns nil while the connection is up, and afterwards why it ended:
// io.EOF (server closed), an error wrapping ErrKicked, ErrClosed (Close was
// called), an error wrapping ErrProtocol, or a network error. Safe for
// concurrent use.
func (c *Client) Err() error {
	select {
	case <-c.closing:
		return c.err
	default:
		return nil
	}
}

// Close closes the connection, makes pending requests return ErrClosed and
// waits for the client's goroutines to exit. Acknowledgements not yet sent
// are lost (the server will deliver those messages again; see SetLastSeq
// and SetGroupSeqs).
// It is safe to call more than once and concurrently; it always returns nil.
func (c *Client) Close() error {
	c.fail(ErrClosed)
	<-c.done
	return nil
}

// fail records the first cause, wakes everyone waiting and closes the socket.
func (c *Client) fail(err error) {
	c.failOnce.Do(func() {
		c.err = err
		close(c.closing)
		_ = c.conn.Close()
	})
}

func (c *Client) exited() {
	if c.running.Add(-1) == 0 {
		close(c.done)
	}
}

// Do sends req with a fresh numeric "reqid" and waits for the response that
// echoes it. req is one of: a map[string]any (must not contain "reqid"), a
// codec.Request or *codec.Request (its ReqID is replaced, the argument is
// not modified), a json.RawMessage or []byte holding a JSON object without
// "reqid", or any value that json.Marshal encodes as an object without a
// "reqid" member. A response with errno != 0 is not an error for Do: check
// Response.Err. Do returns ctx.Err() if ctx ends first (the request may
// still have been sent), and Err() if the connection ends first. Safe for
// concurrent use; responses are matched whatever order they arrive in.
func (c *Client) Do(ctx context.Context, req any) (Response, error) {
	id := c.nextReqID.Add(1)
	body, err := encodeWithReqID(id, req)
	if err != nil {
		return Response{}, err
	}
	return c.roundTrip(ctx, id, body)
}

// marshal is json.Marshal without HTML escaping: '<', '>' and '&' take one
// byte each, not six, so a message's size against the server's limits is
// its own.
func marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

func encodeWithReqID(id uint64, req any) ([]byte, error) {
	var body []byte
	switch r := req.(type) {
	case codec.Request:
		r.ReqID = strconv.AppendUint(nil, id, 10)
		return marshal(&r)
	case *codec.Request:
		cp := *r
		cp.ReqID = strconv.AppendUint(nil, id, 10)
		return marshal(&cp)
	case map[string]any:
		if _, ok := r["reqid"]; ok {
			return nil, errors.New("client: Do: request must not contain \"reqid\"")
		}
		b, err := marshal(r)
		if err != nil {
			return nil, err
		}
		body = b
	case json.RawMessage:
		body = bytes.TrimSpace(r)
	case []byte:
		body = bytes.TrimSpace(r)
	default:
		b, err := marshal(r)
		if err != nil {
			return nil, err
		}
		body = b
	}
	// Splice "reqid" in as the last member: with duplicate names
	// encoding/json keeps the last one.
	if len(body) < 2 || body[0] != '{' || body[len(body)-1] != '}' {
		return nil, errors.New("client: Do: request is not a JSON object")
	}
	out := make([]byte, 0, len(body)+32)
	inner := bytes.TrimSpace(body[1 : len(body)-1])
	out = append(out, '{')
	if len(inner) > 0 {
		out = append(out, inner...)
		out = append(out, ',')
	}
	out = append(out, `"reqid":`...)
	out = strconv.AppendUint(out, id, 10)
	return append(out, '}'), nil
}

// maxRequest is the largest request body to send: Options.MaxRequest, or
// the server's max-frame from LOGIN_ACK where that is smaller.
func (c *Client) maxRequest() int {
	if m := int(c.serverMax.Load()); m > 0 && m < c.opts.MaxRequest {
		return m
	}
	return c.opts.MaxRequest
}

// roundTrip registers id, queues body and waits for the matching response.
func (c *Client) roundTrip(ctx context.Context, id uint64, body []byte) (Response, error) {
	if err := ctx.Err(); err != nil {
		return Response{}, err
	}
	if limit := c.maxRequest(); len(body) > limit || uint64(len(body)) > math.MaxUint32 {
		return Response{}, fmt.Errorf("%w: the request is %d bytes, more than the server's max-frame of %d",
			ErrRequestTooLarge, len(body), limit)
	}
	c.pmu.Lock()
	if err := c.Err(); err != nil {
		c.pmu.Unlock()
		return Response{}, err
	}
	var ch chan Response
	if n := len(c.free); n > 0 {
		ch = c.free[n-1]
		c.free = c.free[:n-1]
	} else {
		ch = make(chan Response, 1)
	}
	c.pending[id] = ch
	c.pmu.Unlock()

	if err := c.enqueue(body); err != nil {
		c.abandon(id, ch)
		return Response{}, err
	}
	select {
	case r := <-ch:
		c.release(ch)
		return r, nil
	case <-ctx.Done():
		if r, ok := c.abandon(id, ch); ok {
			return r, nil
		}
		return Response{}, ctx.Err()
	case <-c.closing:
		if r, ok := c.abandon(id, ch); ok {
			return r, nil
		}
		return Response{}, c.err
	}
}

// abandon unregisters id. If the reader already delivered the response it
// is returned with ok = true.
func (c *Client) abandon(id uint64, ch chan Response) (r Response, ok bool) {
	c.pmu.Lock()
	if _, pending := c.pending[id]; pending {
		delete(c.pending, id)
	} else {
		// The reader removed it and sent (under pmu) the one response.
		r, ok = <-ch, true
	}
	c.putFree(ch)
	c.pmu.Unlock()
	return r, ok
}

func (c *Client) release(ch chan Response) {
	c.pmu.Lock()
	c.putFree(ch)
	c.pmu.Unlock()
}

func (c *Client) putFree(ch chan Response) {
	if len(c.free) < maxFreeChans {
		c.free = append(c.free, ch)
	}
}

// dispatch hands r to the waiter for id; it reports false if there is none.
func (c *Client) dispatch(id uint64, r Response, body []byte) bool {
	c.pmu.Lock()
	ch, ok := c.pending[id]
	if ok {
		delete(c.pending, id)
		r.Body = bytes.Clone(body)
		ch <- r // buffered, and this is its only send: never blocks
	}
	c.pmu.Unlock()
	return ok
}

// enqueue appends one frame holding body to the write queue.
func (c *Client) enqueue(body []byte) error {
	c.qmu.Lock()
	if err := c.Err(); err != nil {
		c.qmu.Unlock()
		return err
	}
	c.queue = codec.AppendFrame(c.queue, body)
	c.qmu.Unlock()
	c.signal()
	return nil
}

func (c *Client) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// writeLoop writes queued frames in batches, adding a coalesced DELIVERED
// for the highest requested ack and, if configured, keep-alive pings.
func (c *Client) writeLoop() {
	defer c.exited()
	var tick <-chan time.Time
	if c.opts.PingInterval > 0 {
		t := time.NewTicker(c.opts.PingInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		ping := false
		select {
		case <-c.wake:
		case <-tick:
			ping = true
		case <-c.closing:
			return
		}
		c.qmu.Lock()
		buf := c.queue
		c.queue = c.spare[:0]
		c.qmu.Unlock()
		if c.ackReset.Swap(false) {
			c.ackSent = 0
		}
		var acks []byte
		if ack := c.ackWant.Load(); ack > c.ackSent {
			acks = appendDelivered(make([]byte, 0, deliveredCap+4+len(buf)), ack)
			c.ackSent = ack
		}
		acks = c.appendGroupAcks(acks)
		if len(acks) > 0 {
			// Before the queued requests: an Ack followed by a Logout
			// must reach the server while still logged in.
			buf = append(acks, buf...)
		}
		if ping {
			buf = codec.AppendFrame(buf, []byte(`{"msgid":13}`))
		}
		if len(buf) > 0 {
			if _, err := c.conn.Write(buf); err != nil {
				c.fail(err)
				return
			}
		}
		if cap(buf) <= maxKeptWrite {
			c.spare = buf[:0]
		} else {
			c.spare = nil
		}
	}
}

func appendDelivered(dst []byte, seq int64) []byte {
	var body [deliveredCap]byte
	b := append(body[:0], `{"msgid":12,"seq":`...)
	b = strconv.AppendInt(b, seq, 10)
	b = append(b, '}')
	return codec.AppendFrame(dst, b)
}

func appendGroupDelivered(dst []byte, gid codec.GroupID, gseq codec.Seq) []byte {
	var body [groupDeliveredCap]byte
	b := append(body[:0], `{"msgid":12,"groupid":`...)
	b = strconv.AppendInt(b, int64(gid), 10)
	b = append(b, `,"gseq":`...)
	b = strconv.AppendInt(b, int64(gseq), 10)
	b = append(b, '}')
	return codec.AppendFrame(dst, b)
}

// connReader is the reader goroutine's view of the connection: with pings
// enabled it pushes the read deadline back before blocking reads.
type connReader Client

func (r *connReader) Read(p []byte) (int, error) {
	if iv := r.opts.PingInterval; iv > 0 {
		if now := time.Now(); now.Sub(r.lastRead) >= iv {
			_ = r.conn.SetReadDeadline(now.Add(silenceFactor * iv))
			r.lastRead = now
		}
	}
	return r.conn.Read(p)
}

// wireMsg is the union of the server-to-client fields the reader needs.
type wireMsg struct {
	MsgID      codec.MsgID      `json:"msgid"`
	ReqID      json.RawMessage  `json:"reqid"`
	Seq        codec.Seq        `json:"seq"`
	GSeq       codec.Seq        `json:"gseq"`
	Errno      codec.Errno      `json:"errno"`
	ErrMsg     string           `json:"errmsg"`
	MaxFrame   int              `json:"maxframe"`
	Ack        codec.MsgID      `json:"ack"`
	ID         codec.UserID     `json:"id"`
	Name       string           `json:"name"`
	ToID       codec.UserID     `json:"toid"`
	GroupID    codec.GroupID    `json:"groupid"`
	Msg        string           `json:"msg"`
	Time       string           `json:"time"`
	OfflineMsg []codec.Delivery `json:"offlineMsg"`
}

func (c *Client) readLoop() {
	defer c.exited()
	err := c.readFrames()
	if errors.Is(err, io.ErrUnexpectedEOF) {
		err = io.EOF // server closed mid-frame
	}
	c.fail(err)
	close(c.deliveries)
}

func (c *Client) readFrames() error {
	for {
		hdr, err := c.br.Peek(codec.HeaderLen)
		if err != nil {
			return c.readErr(err)
		}
		n := codec.FrameLen(hdr)
		switch {
		case n == 0:
			return protocolErrorf("empty frame")
		case n > c.opts.MaxFrame:
			return protocolErrorf("frame of %d bytes exceeds MaxFrame %d", n, c.opts.MaxFrame)
		}
		var body []byte
		if total := codec.HeaderLen + n; total <= c.br.Size() {
			buf, err := c.br.Peek(total)
			if err != nil {
				return c.readErr(err)
			}
			body = buf[codec.HeaderLen:]
			err = c.handle(body)
			_, _ = c.br.Discard(total)
			if err != nil {
				return err
			}
			continue
		}
		_, _ = c.br.Discard(codec.HeaderLen)
		body = make([]byte, n)
		if _, err := io.ReadFull(c.br, body); err != nil {
			return c.readErr(err)
		}
		if err := c.handle(body); err != nil {
			return err
		}
	}
}

func (c *Client) readErr(err error) error {
	var ne net.Error
	if c.opts.PingInterval > 0 && errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("client: nothing received from server for %v: %w", silenceFactor*c.opts.PingInterval, err)
	}
	return err
}

// errStop ends the read loop without overriding an earlier cause.
var errStop = errors.New("client: stopped")

// handle processes one frame body; body is only valid during the call.
func (c *Client) handle(body []byte) error {
	var m wireMsg
	if err := json.Unmarshal(body, &m); err != nil {
		return protocolErrorf("bad JSON from server: %v", err)
	}
	if (m.MsgID == codec.MsgOneChat || m.MsgID == codec.MsgGroupChat) &&
		(m.Seq > 0 || (m.GSeq > 0 && m.GroupID != 0)) {
		return c.push(codec.Delivery{
			MsgID: m.MsgID, ID: m.ID, Name: m.Name, ToID: m.ToID, GroupID: m.GroupID,
			Msg: m.Msg, Time: m.Time, Seq: m.Seq, GSeq: m.GSeq,
		})
	}
	if m.MsgID == codec.MsgKicked {
		close(c.kicked)
		c.fail(fmt.Errorf("%w: %s", ErrKicked, m.ErrMsg))
		return errStop
	}
	if m.MsgID == codec.MsgLoginAck && m.Errno == codec.OK {
		if m.MaxFrame > 0 {
			c.serverMax.Store(int64(m.MaxFrame))
		}
		// Seqs are per user: a login as another user on this connection
		// starts dedup and acknowledgement afresh.
		if prev := c.user.Swap(int64(m.ID)); prev != 0 && prev != int64(m.ID) {
			c.lastSeq.Store(0)
			c.ackWant.Store(0)
			c.ackReset.Store(true)
			c.resetGroups()
		}
	}
	if m.MsgID == codec.MsgLoginAck && m.Errno == codec.OK && len(m.OfflineMsg) > 0 {
		// Before the waiter learns about the login, so these cannot be
		// overtaken by live deliveries read after this frame.
		slices.SortStableFunc(m.OfflineMsg, func(a, b codec.Delivery) int {
			return cmp.Compare(a.Seq, b.Seq)
		})
		for _, d := range m.OfflineMsg {
			if err := c.push(d); err != nil {
				return err
			}
		}
	}
	r := Response{
		Header: codec.Header{MsgID: m.MsgID, ReqID: m.ReqID, Seq: m.Seq},
		Errno:  m.Errno,
		ErrMsg: m.ErrMsg,
		Ack:    m.Ack,
	}
	if id, ok := parseReqID(m.ReqID); ok && c.dispatch(id, r, body) {
		return nil
	}
	if m.MsgID == codec.MsgPong && len(m.ReqID) == 0 {
		return nil // answer to a keep-alive ping
	}
	if f := c.opts.OnUnsolicited; f != nil {
		r.Body = bytes.Clone(body)
		f(r)
	}
	return nil
}

// push hands d to the application unless it is a duplicate. It blocks while
// the channel is full, until the connection fails. A delivery with a Seq is
// in the inbox stream; one with only a GSeq is in its group's log.
func (c *Client) push(d codec.Delivery) error {
	if d.Seq <= 0 && d.GSeq > 0 {
		return c.pushGroup(d)
	}
	if d.Seq > 0 && int64(d.Seq) <= c.lastSeq.Load() {
		if !c.opts.ManualAck {
			c.requestAck(int64(d.Seq)) // handed out before: acknowledge again
		}
		return nil
	}
	// Raise lastSeq before the send, so that a consumer that got d sees
	// LastSeq >= d.Seq (and Ack(d.Seq) is not clamped); undo it if d is
	// never handed out.
	prev := c.lastSeq.Load()
	if d.Seq > 0 {
		c.lastSeq.Store(int64(d.Seq))
	}
	select {
	case c.deliveries <- d:
	case <-c.closing:
		c.lastSeq.Store(prev)
		return errStop
	}
	if d.Seq > 0 && !c.opts.ManualAck {
		c.requestAck(int64(d.Seq))
	}
	return nil
}

// pushGroup is push for a delivery numbered in group d.GroupID's log.
func (c *Client) pushGroup(d codec.Delivery) error {
	gid := d.GroupID
	c.gmu.Lock()
	prev := c.gseqs[gid]
	if d.GSeq <= prev {
		// Sent again, so the server has no acknowledgement stored for it
		// (an earlier one was lost with a connection). Acknowledge it
		// again if it was processed.
		queued := false
		if !c.opts.ManualAck || d.GSeq <= c.gdone[gid] {
			queued = c.wantGroupAckLocked(gid, d.GSeq, true)
		}
		c.gmu.Unlock()
		if queued {
			c.signal()
		}
		return nil
	}
	// As in push: raised before the send, undone if d is never handed out.
	putSeq(&c.gseqs, gid, d.GSeq)
	c.gmu.Unlock()
	select {
	case c.deliveries <- d:
	case <-c.closing:
		c.gmu.Lock()
		if c.gseqs[gid] == d.GSeq {
			if prev > 0 {
				c.gseqs[gid] = prev
			} else {
				delete(c.gseqs, gid)
			}
		}
		c.gmu.Unlock()
		return errStop
	}
	if !c.opts.ManualAck {
		c.requestGroupAck(gid, d.GSeq, false)
	}
	return nil
}

// parseReqID parses a reqid this client generated: a decimal uint64.
func parseReqID(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	var n uint64
	for _, ch := range b {
		if ch < '0' || ch > '9' {
			return 0, false
		}
		d := uint64(ch - '0')
		if n > (math.MaxUint64-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}
