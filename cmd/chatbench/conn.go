package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/chatcluster/chatcluster/codec"
)

// bconn is chatbench's lean protocol connection. It is deliberately not the
// client package: one goroutine per connection instead of two, no
// reflection on the hot path, no per-request goroutine or channel, and, most
// importantly, it does not hide duplicate deliveries (client.Client drops a
// seq it has seen, which would make the duplicate check blind).
//
// Requests are written directly by the calling goroutine under wmu; the
// reader goroutine matches responses by reqid. Asynchronous requests (chat
// sends) report their ACK through the onAck hook on the reader goroutine.
type bconn struct {
	nc net.Conn
	br *bufio.Reader

	wmu    sync.Mutex
	wbuf   []byte
	nextID uint64

	pmu     sync.Mutex
	pending map[uint64]pend

	// Hooks, set before start; they run on the reader goroutine.
	// onDelivery gets g == nil and the inbox seq for a one-to-one delivery,
	// or the group and its gseq for a group delivery; onAck gets the gseq of
	// a GROUP_CHAT ACK (0 if none).
	onDelivery func(c *bconn, g *groupPos, seq int64, msg []byte, now int64)
	onAck      func(c *bconn, p pend, errno, gseq int64, now int64)

	// lmu guards rs and acked: the reader goroutine writes them (in the
	// hooks: one uncontended lock per delivery or ACK), the drain compares
	// them.
	lmu      sync.Mutex
	rs       recvState    // duplicate/order state and the messages received
	acked    bitset       // counters of this connection's chat sends acked with errno 0
	lastSeq  atomic.Int64 // highest seq received
	ackedSeq atomic.Int64 // highest seq sent in DELIVERED
	ackNow   bool         // send DELIVERED after each read batch

	// groups lists the groups this connection has received from (or was
	// told to expect), usually one: a slice scanned per delivery, replaced
	// (copy on write, under gmu) only when a group is added.
	groups atomic.Pointer[[]*groupPos]
	gmu    sync.Mutex

	done chan struct{}
	err  error // set before done is closed
}

// pend is one request waiting for its response.
type pend struct {
	sendNanos int64           // chat send: its stamp (paced: the time it was due)
	counter   uint64          // chat send: the message's counter
	gid       int64           // GROUP_CHAT: the group
	ch        chan callResult // nil for asynchronous requests
}

// groupPos is one group as this connection receives it: its DELIVERED
// position and the reader-owned check of its log.
type groupPos struct {
	gid   int64
	last  atomic.Int64 // highest gseq received
	acked atomic.Int64 // highest gseq sent in DELIVERED
	trk   groupTrack
}

// group returns the state of group gid, adding it if new. start > 0 is the
// first gseq the member must see (1 for a group it was in before anything
// was sent); with 0 the first gseq observed starts the check. Only a new
// group's start counts, so call it with a start before traffic begins.
func (c *bconn) group(gid, start int64) *groupPos {
	if p := c.groups.Load(); p != nil {
		for _, g := range *p {
			if g.gid == gid {
				return g
			}
		}
	}
	c.gmu.Lock()
	defer c.gmu.Unlock()
	var gs []*groupPos
	if p := c.groups.Load(); p != nil {
		gs = *p
		for _, g := range gs {
			if g.gid == gid {
				return g
			}
		}
	}
	g := &groupPos{gid: gid}
	if start > 0 {
		g.trk.cov.init(start)
	}
	gs = append(gs[:len(gs):len(gs)], g)
	c.groups.Store(&gs)
	return g
}

// groupList returns the groups added so far.
func (c *bconn) groupList() []*groupPos {
	if p := c.groups.Load(); p != nil {
		return *p
	}
	return nil
}

// callResult is a copied response of a synchronous request.
type callResult struct {
	MsgID   int64
	Errno   int64
	ErrMsg  string
	ID      int64
	GroupID int64
	Token   string
	Node    string
	err     error
}

// maxFrame bounds frames from the server (LOGIN_ACK of a big group member
// can be large).
const maxFrame = 16 << 20

// readBuf is the bufio.Reader size; larger frames get their own buffer.
const readBuf = 4096

var (
	errConnClosed = errors.New("connection closed")
	errKicked     = errors.New("kicked by the server")
)

// ServerErr is a response with errno != 0.
type ServerErr struct {
	Errno  int64
	ErrMsg string
}

func (e *ServerErr) Error() string {
	return fmt.Sprintf("server errno %d (%s): %s", e.Errno, codec.Errno(e.Errno), e.ErrMsg)
}

// dialer spreads connections over target addresses and local source
// addresses 127.0.0.1..127.0.0.N.
type dialer struct {
	src  []net.IP
	next atomic.Uint64
}

func newDialer(sourceIPs int) *dialer {
	d := &dialer{}
	for i := 1; i <= max(sourceIPs, 1); i++ {
		if sourceIPs <= 1 {
			d.src = append(d.src, nil) // let the kernel choose
			break
		}
		d.src = append(d.src, net.IPv4(127, 0, byte(i>>8), byte(i&0xff)))
	}
	return d
}

// dial opens a TCP connection to addr from the next source address.
func (d *dialer) dial(ctx context.Context, addr string) (net.Conn, error) {
	nd := net.Dialer{Timeout: 10 * time.Second}
	if ip := d.src[d.next.Add(1)%uint64(len(d.src))]; ip != nil {
		nd.LocalAddr = &net.TCPAddr{IP: ip}
		nd.Control = bindNoPort
	}
	return nd.DialContext(ctx, "tcp", addr)
}

// bindNoPort sets IP_BIND_ADDRESS_NO_PORT before the dialer binds the
// source address: the kernel then picks the port at connect time, unique per
// 4-tuple, instead of searching for a port free on every destination at
// bind time, which with thousands of sockets (and TIME_WAITs) cost the login
// storm a whole core in the kernel and limited it to ~1,000 connects/s.
func bindNoPort(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	})
	if err != nil {
		return err
	}
	return serr
}

// newConn wraps nc; call start to run the reader.
func newConn(nc net.Conn) *bconn {
	return &bconn{
		nc:      nc,
		pending: map[uint64]pend{},
		done:    make(chan struct{}),
	}
}

func (c *bconn) start() {
	c.br = bufio.NewReaderSize(c.nc, readBuf)
	go c.readLoop()
}

// Close closes the socket (with a reset: tens of thousands of benchmark
// connections must not leave as many TIME_WAIT sockets holding ports on a
// shared machine) and waits for the reader.
func (c *bconn) Close() {
	if tc, ok := c.nc.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.nc.Close()
	if c.br != nil {
		<-c.done
	}
}

// Done is closed when the connection has ended.
func (c *bconn) Done() <-chan struct{} { return c.done }

// Err is why the connection ended; call it after Done is closed.
func (c *bconn) Err() error { return c.err }

// write frames the JSON object that build appends (given the reqid) and
// writes it, registering p under that reqid first unless reqid is 0.
func (c *bconn) write(withReq bool, p pend, build func(dst []byte, reqid uint64) []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	var id uint64
	if withReq {
		c.nextID++
		id = c.nextID
		c.pmu.Lock()
		select {
		case <-c.done:
			c.pmu.Unlock()
			return c.err
		default:
		}
		c.pending[id] = p
		c.pmu.Unlock()
	}
	buf := append(c.wbuf[:0], 0, 0, 0, 0)
	buf = build(buf, id)
	n := len(buf) - codec.HeaderLen
	buf[0], buf[1], buf[2], buf[3] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
	c.wbuf = buf
	if _, err := c.nc.Write(buf); err != nil {
		if withReq {
			c.pmu.Lock()
			delete(c.pending, id)
			c.pmu.Unlock()
		}
		_ = c.nc.Close()
		return err
	}
	return nil
}

// call sends a request and waits for its response.
func (c *bconn) call(ctx context.Context, build func(dst []byte, reqid uint64) []byte) (callResult, error) {
	ch := make(chan callResult, 1)
	if err := c.write(true, pend{ch: ch}, build); err != nil {
		return callResult{}, err
	}
	select {
	case r := <-ch:
		if r.err != nil {
			return r, r.err
		}
		if r.Errno != 0 {
			return r, &ServerErr{Errno: r.Errno, ErrMsg: r.ErrMsg}
		}
		return r, nil
	case <-ctx.Done():
		_ = c.nc.Close() // the response would arrive unmatched; give up on the connection
		return callResult{}, ctx.Err()
	}
}

func appendStr(dst []byte, s string) []byte { return strconv.AppendQuote(dst, s) }

func (c *bconn) signup(ctx context.Context, name, password string) (int64, error) {
	r, err := c.call(ctx, func(b []byte, id uint64) []byte {
		b = append(b, `{"msgid":4,"reqid":`...)
		b = strconv.AppendUint(b, id, 10)
		b = append(b, `,"name":`...)
		b = appendStr(b, name)
		b = append(b, `,"password":`...)
		b = appendStr(b, password)
		return append(b, '}')
	})
	return r.ID, err
}

// login logs in with a password, or with a token when token != "". It
// returns the session token and the node the session is on (LOGIN_ACK's
// "node", "" if the server does not say).
func (c *bconn) login(ctx context.Context, uid int64, password, token string) (tok, node string, err error) {
	r, err := c.call(ctx, func(b []byte, id uint64) []byte {
		b = append(b, `{"msgid":1,"reqid":`...)
		b = strconv.AppendUint(b, id, 10)
		b = append(b, `,"id":`...)
		b = strconv.AppendInt(b, uid, 10)
		if token != "" {
			b = append(b, `,"token":`...)
			b = appendStr(b, token)
		} else {
			b = append(b, `,"password":`...)
			b = appendStr(b, password)
		}
		return append(b, '}')
	})
	return r.Token, r.Node, err
}

func (c *bconn) createGroup(ctx context.Context, name string) (int64, error) {
	r, err := c.call(ctx, func(b []byte, id uint64) []byte {
		b = append(b, `{"msgid":8,"reqid":`...)
		b = strconv.AppendUint(b, id, 10)
		b = append(b, `,"groupname":`...)
		b = appendStr(b, name)
		return append(b, `,"groupdesc":"chatbench"}`...)
	})
	return r.GroupID, err
}

func (c *bconn) addGroup(ctx context.Context, gid int64) error {
	_, err := c.call(ctx, func(b []byte, id uint64) []byte {
		b = append(b, `{"msgid":9,"reqid":`...)
		b = strconv.AppendUint(b, id, 10)
		b = append(b, `,"groupid":`...)
		b = strconv.AppendInt(b, gid, 10)
		return append(b, '}')
	})
	return err
}

func (c *bconn) ping(ctx context.Context) error {
	_, err := c.call(ctx, func(b []byte, id uint64) []byte {
		b = append(b, `{"msgid":13,"reqid":`...)
		b = strconv.AppendUint(b, id, 10)
		return append(b, '}')
	})
	return err
}

// sendChat writes a ONE_CHAT (group == false) or GROUP_CHAT without waiting;
// onAck reports the outcome with sendNanos and counter. The body must need
// no JSON escaping (appendBody output). cmid > 0 adds a numeric clientmsgid.
func (c *bconn) sendChat(group bool, to int64, sendNanos int64, counter uint64, body []byte, cmid uint64) error {
	p := pend{sendNanos: sendNanos, counter: counter}
	if group {
		p.gid = to
	}
	return c.write(true, p, func(b []byte, id uint64) []byte {
		if group {
			b = append(b, `{"msgid":10,"reqid":`...)
		} else {
			b = append(b, `{"msgid":6,"reqid":`...)
		}
		b = strconv.AppendUint(b, id, 10)
		if group {
			b = append(b, `,"groupid":`...)
		} else {
			b = append(b, `,"toid":`...)
		}
		b = strconv.AppendInt(b, to, 10)
		if cmid > 0 {
			b = append(b, `,"clientmsgid":`...)
			b = strconv.AppendUint(b, cmid, 10)
		}
		b = append(b, `,"msg":"`...)
		b = append(b, body...)
		return append(b, `"}`...)
	})
}

// flushAck sends DELIVERED for the highest inbox seq and the highest gseq
// of each group received, where not yet sent: the seq and the first group
// in one frame, any further group in a frame of its own. It reports
// whether it wrote any.
func (c *bconn) flushAck() (wrote bool) {
	seq := c.lastSeq.Load()
	if seq <= c.ackedSeq.Load() {
		seq = 0
	} else {
		c.ackedSeq.Store(seq)
	}
	gs := c.groupList()
	for {
		var gid, gseq int64
		for len(gs) > 0 && gid == 0 {
			g := gs[0]
			gs = gs[1:]
			if v := g.last.Load(); v > g.acked.Load() {
				g.acked.Store(v)
				gid, gseq = g.gid, v
			}
		}
		if seq == 0 && gid == 0 {
			return wrote
		}
		if c.write(false, pend{}, func(b []byte, _ uint64) []byte {
			return appendDelivered(b, seq, gid, gseq)
		}) != nil {
			return wrote
		}
		wrote, seq = true, 0
	}
}

// appendDelivered appends a DELIVERED (12) for inbox seq (if > 0) and group
// gid's log through gseq (if gid > 0).
func appendDelivered(b []byte, seq, gid, gseq int64) []byte {
	b = append(b, `{"msgid":12`...)
	if seq > 0 {
		b = append(b, `,"seq":`...)
		b = strconv.AppendInt(b, seq, 10)
	}
	if gid > 0 {
		b = append(b, `,"groupid":`...)
		b = strconv.AppendInt(b, gid, 10)
		b = append(b, `,"gseq":`...)
		b = strconv.AppendInt(b, gseq, 10)
	}
	return append(b, '}')
}

func (c *bconn) readLoop() {
	err := c.readFrames()
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
		err = errConnClosed
	}
	_ = c.nc.Close()
	c.pmu.Lock()
	c.err = err
	close(c.done)
	pending := c.pending
	c.pending = map[uint64]pend{}
	c.pmu.Unlock()
	now := nowNanos()
	for _, p := range pending {
		if p.ch != nil {
			p.ch <- callResult{err: err}
		} else if c.onAck != nil {
			c.onAck(c, p, -1, 0, now)
		}
	}
}

func (c *bconn) readFrames() error {
	var f frame
	for {
		if c.ackNow && c.br.Buffered() == 0 {
			c.flushAck()
		}
		hdr, err := c.br.Peek(codec.HeaderLen)
		if err != nil {
			return err
		}
		n := codec.FrameLen(hdr)
		if n <= 0 || n > maxFrame {
			return fmt.Errorf("bad frame length %d from server", n)
		}
		total := codec.HeaderLen + n
		if total <= c.br.Size() {
			buf, err := c.br.Peek(total)
			if err != nil {
				return err
			}
			err = c.handle(buf[codec.HeaderLen:], &f)
			_, _ = c.br.Discard(total)
			if err != nil {
				return err
			}
			continue
		}
		_, _ = c.br.Discard(codec.HeaderLen)
		body := make([]byte, n)
		if _, err := io.ReadFull(c.br, body); err != nil {
			return err
		}
		if err := c.handle(body, &f); err != nil {
			return err
		}
	}
}

func (c *bconn) handle(body []byte, f *frame) error {
	if err := scanFrame(body, f); err != nil {
		return fmt.Errorf("%w: %.200s", err, body)
	}
	now := nowNanos()
	switch codec.MsgID(f.MsgID) {
	case codec.MsgGroupChat:
		if f.GSeq > 0 && f.GroupID > 0 {
			c.deliveredGroup(f.GroupID, f.GSeq, f.msgText(), now)
			return nil
		}
		if f.Seq > 0 {
			c.delivered(f.Seq, f.msgText(), now)
			return nil
		}
	case codec.MsgOneChat:
		if f.Seq > 0 {
			c.delivered(f.Seq, f.msgText(), now)
			return nil
		}
	case codec.MsgKicked:
		return errKicked
	case codec.MsgLoginAck:
		if f.Errno == 0 {
			for _, d := range f.offline() {
				if d.GSeq > 0 && d.GroupID > 0 && d.MsgID == int64(codec.MsgGroupChat) {
					c.deliveredGroup(d.GroupID, d.GSeq, []byte(d.Msg), now)
				} else {
					c.delivered(d.Seq, []byte(d.Msg), now)
				}
			}
		}
	}
	if !f.HasReq || f.ReqID <= 0 {
		return nil // unsolicited (e.g. a PONG without reqid)
	}
	c.pmu.Lock()
	p, ok := c.pending[uint64(f.ReqID)]
	if ok {
		delete(c.pending, uint64(f.ReqID))
	}
	c.pmu.Unlock()
	if !ok {
		return nil
	}
	if p.ch == nil {
		if c.onAck != nil {
			c.onAck(c, p, f.Errno, f.GSeq, now)
		}
		return nil
	}
	p.ch <- callResult{
		MsgID: f.MsgID, Errno: f.Errno, ErrMsg: string(f.ErrMsg),
		ID: f.ID, GroupID: f.GroupID, Token: string(f.Token), Node: string(f.Node),
	}
	return nil
}

func (c *bconn) delivered(seq int64, msg []byte, now int64) {
	if seq > c.lastSeq.Load() {
		c.lastSeq.Store(seq)
	}
	if c.onDelivery != nil {
		c.onDelivery(c, nil, seq, msg, now)
	}
}

func (c *bconn) deliveredGroup(gid, gseq int64, msg []byte, now int64) {
	g := c.group(gid, 0)
	if gseq > g.last.Load() {
		g.last.Store(gseq)
	}
	if c.onDelivery != nil {
		c.onDelivery(c, g, gseq, msg, now)
	}
}
