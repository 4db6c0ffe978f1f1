package main

import (
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/chatcluster/chatcluster/codec"
)

// relayMain runs the relay baseline for the chat scenario: a plain
// goroutine-per-connection Go TCP server that speaks just enough of the
// protocol for chatbench (SIGNUP, LOGIN, ONE_CHAT, DELIVERED, PING) and
// keeps everything in memory. It stores nothing, checks no password, and
// refuses a message to a user who is not connected: it is what relaying
// the same frames costs on the same machine with no storage at all, the
// floor any chat server with this traffic stands on. It prints "listening
// ADDR" on stdout once it accepts connections.
func relayMain(args []string, stdout, stderr io.Writer) int {
	r := newRelay()
	return listenMain("relay-server", "127.0.0.1:6200", args, stdout, stderr, func(nc net.Conn) {
		r.conn(&relayConn{nc: nc})
	})
}

// relayShards spreads the relay's user table over this many locks.
const relayShards = 64

// relay is the relay baseline's state. Safe for concurrent use.
type relay struct {
	mu     sync.Mutex
	names  map[string]codec.UserID // guarded by mu
	last   codec.UserID            // the last id given; guarded by mu
	shards [relayShards]relayShard
}

// relayShard holds the connections of the users whose id falls in it.
type relayShard struct {
	sync.RWMutex
	online map[codec.UserID]*relayConn
}

func newRelay() *relay {
	r := &relay{names: map[string]codec.UserID{}}
	for i := range r.shards {
		r.shards[i].online = map[codec.UserID]*relayConn{}
	}
	return r
}

func (r *relay) shardOf(id codec.UserID) *relayShard { return &r.shards[uint64(id)%relayShards] }

// relayConn is one client connection. Any connection's goroutine may write
// to it (a delivery), so writes and the inbox seq are under mu.
type relayConn struct {
	nc   net.Conn
	mu   sync.Mutex
	seq  codec.Seq    // the last seq delivered to this connection's user
	user codec.UserID // logged-in user, 0 before LOGIN; owned by the reading goroutine
}

// write writes one frame (codec.MustMarshal's).
func (c *relayConn) write(frame []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writeLocked(frame)
}

// writeLocked writes one frame and reports whether it was written; a failed
// write closes the connection (its reading goroutine then ends).
func (c *relayConn) writeLocked(frame []byte) bool {
	if _, err := c.nc.Write(frame); err != nil {
		_ = c.nc.Close()
		return false
	}
	return true
}

// conn serves one connection until it closes.
func (r *relay) conn(c *relayConn) {
	defer func() {
		_ = c.nc.Close()
		r.setUser(c, 0)
	}()
	readFrames(c.nc, func(body []byte) bool {
		r.handle(c, body)
		return true
	})
}

// setUser makes c the connection of user id (0: of nobody), and c's
// previous user's connection no longer c. Only c's reading goroutine calls
// it.
func (r *relay) setUser(c *relayConn, id codec.UserID) {
	if old := c.user; old != 0 {
		sh := r.shardOf(old)
		sh.Lock()
		if sh.online[old] == c {
			delete(sh.online, old)
		}
		sh.Unlock()
	}
	c.user = id
	if id != 0 {
		sh := r.shardOf(id)
		sh.Lock()
		sh.online[id] = c
		sh.Unlock()
	}
}

// handle answers one request.
func (r *relay) handle(c *relayConn, body []byte) {
	req, err := codec.ParseRequest(body)
	if err != nil {
		c.write(codec.MustMarshal(&codec.Ack{MsgID: codec.MsgAck, Errno: codec.ErrnoBadRequest, ErrMsg: err.Error()}))
		return
	}
	fail := func(e codec.Errno, msg string) {
		c.write(codec.MustMarshal(&codec.Ack{MsgID: codec.MsgAck, ReqID: req.ReqID, Ack: req.MsgID, Errno: e, ErrMsg: msg}))
	}
	switch req.MsgID {
	case codec.MsgSignup:
		if req.Name == nil {
			fail(codec.ErrnoBadRequest, "name missing")
			return
		}
		id, ok := r.signup(*req.Name)
		if !ok {
			c.write(codec.MustMarshal(&codec.ErrorResponse{MsgID: codec.MsgSignupAck, ReqID: req.ReqID, Errno: codec.ErrnoConflict, ErrMsg: "name taken"}))
			return
		}
		c.write(codec.MustMarshal(&codec.SignupAck{MsgID: codec.MsgSignupAck, ReqID: req.ReqID, ID: id}))
	case codec.MsgLogin:
		if req.ID == nil || *req.ID <= 0 || codec.UserID(*req.ID) > r.lastID() {
			c.write(codec.MustMarshal(&codec.ErrorResponse{MsgID: codec.MsgLoginAck, ReqID: req.ReqID, Errno: codec.ErrnoAuth, ErrMsg: "no such user"}))
			return
		}
		id := codec.UserID(*req.ID)
		r.setUser(c, id)
		c.write(codec.MustMarshal(&codec.LoginAck{MsgID: codec.MsgLoginAck, ReqID: req.ReqID, ID: id,
			Name: strconv.FormatInt(int64(id), 10), Token: "relay", Friends: []codec.Friend{}, Groups: []codec.Group{}, OfflineMsg: []codec.Delivery{}}))
	case codec.MsgOneChat:
		switch {
		case c.user == 0:
			fail(codec.ErrnoNotLoggedIn, "log in first")
		case req.ToID == nil || req.Msg == nil:
			fail(codec.ErrnoBadRequest, "toid and msg required")
		default:
			if !r.deliver(c.user, codec.UserID(*req.ToID), *req.Msg) {
				fail(codec.ErrnoUnavailable, "recipient not connected (the relay stores nothing)")
				return
			}
			c.write(codec.MustMarshal(&codec.Ack{MsgID: codec.MsgAck, ReqID: req.ReqID, Ack: codec.MsgOneChat}))
		}
	case codec.MsgDelivered:
		// Nothing is stored, so there is nothing to acknowledge.
	case codec.MsgPing:
		c.write(codec.MustMarshal(&codec.Pong{MsgID: codec.MsgPong, ReqID: req.ReqID}))
	default:
		fail(codec.ErrnoBadRequest, "not supported by the relay baseline")
	}
}

// signup gives name the next user id, or reports it taken.
func (r *relay) signup(name string) (codec.UserID, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.names[name]; ok {
		return 0, false
	}
	r.last++
	r.names[name] = r.last
	return r.last, true
}

func (r *relay) lastID() codec.UserID {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

// deliver writes msg to to's connection with the next seq of its inbox; it
// reports false if to is not connected or the write failed.
func (r *relay) deliver(from, to codec.UserID, msg string) bool {
	sh := r.shardOf(to)
	sh.RLock()
	rc := sh.online[to]
	sh.RUnlock()
	if rc == nil {
		return false
	}
	d := codec.Delivery{MsgID: codec.MsgOneChat, ID: from, Name: strconv.FormatInt(int64(from), 10),
		ToID: to, Msg: msg, Time: codec.FormatTime(time.Now())}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	d.Seq = rc.seq + 1
	if !rc.writeLocked(codec.MustMarshal(&d)) {
		return false
	}
	rc.seq = d.Seq
	return true
}
