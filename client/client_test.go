package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"reflect"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatcluster/chatcluster/codec"
)

const testTimeout = 5 * time.Second

// checkFor polls f until it returns nil, failing the test with f's last
// error after timeout.
func checkFor(t *testing.T, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %v: %v", timeout, err)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitClosed fails the test unless ch is closed within testTimeout.
func waitClosed[T any](t *testing.T, ch <-chan T, what string) {
	t.Helper()
	timer := time.NewTimer(testTimeout)
	defer timer.Stop()
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-timer.C:
			t.Fatalf("%s not closed after %v", what, testTimeout)
		}
	}
}

// peer is the fake server's end of one connection. Its methods must be
// called from the test goroutine only.
type peer struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
}

// frame is one request as the fake server sees it.
type frame struct {
	*codec.Request
	raw []byte
}

// dial starts a fake server, connects a Client to it and returns both ends;
// both are closed when the test ends.
func dial(t *testing.T, opts Options) (*Client, *peer) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- conn
	}()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := Dial(ctx, ln.Addr().String(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	conn, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { conn.Close() })
	return c, &peer{t: t, conn: conn, br: bufio.NewReader(conn)}
}

// readErr reads one frame, returning an error instead of failing.
func (p *peer) readErr() (frame, error) {
	_ = p.conn.SetReadDeadline(time.Now().Add(testTimeout))
	var hdr [codec.HeaderLen]byte
	if _, err := io.ReadFull(p.br, hdr[:]); err != nil {
		return frame{}, err
	}
	body := make([]byte, codec.FrameLen(hdr[:]))
	if _, err := io.ReadFull(p.br, body); err != nil {
		return frame{}, err
	}
	req, err := codec.ParseRequest(body)
	if err != nil {
		return frame{}, fmt.Errorf("client sent an invalid request %s: %w", body, err)
	}
	return frame{Request: req, raw: body}, nil
}

// read reads one frame sent by the client.
func (p *peer) read() frame {
	p.t.Helper()
	f, err := p.readErr()
	if err != nil {
		p.t.Fatalf("peer read: %v", err)
	}
	return f
}

// readMsg reads one frame and checks its msgid.
func (p *peer) readMsg(want codec.MsgID) frame {
	p.t.Helper()
	f := p.read()
	if f.MsgID != want {
		p.t.Fatalf("peer got %s, want msgid %d", f.raw, want)
	}
	return f
}

// send writes each value as one frame, all in a single write.
func (p *peer) send(vs ...any) {
	p.t.Helper()
	var buf []byte
	for _, v := range vs {
		switch b := v.(type) {
		case []byte: // pre-framed bytes, sent as is
			buf = append(buf, b...)
		default:
			buf = append(buf, codec.MustMarshal(v)...)
		}
	}
	_ = p.conn.SetWriteDeadline(time.Now().Add(testTimeout))
	if _, err := p.conn.Write(buf); err != nil {
		p.t.Fatalf("peer write: %v", err)
	}
}

func delivery(seq codec.Seq) codec.Delivery {
	return codec.Delivery{MsgID: codec.MsgOneChat, ID: 7, Name: "bob", ToID: 1, Msg: "m" + strconv.Itoa(int(seq)), Time: "2024-01-02 03:04:05", Seq: seq}
}

func ackFor(f frame, errno codec.Errno, errmsg string) codec.Ack {
	return codec.Ack{MsgID: codec.MsgAck, ReqID: f.ReqID, Ack: f.MsgID, Errno: errno, ErrMsg: errmsg}
}

// next receives one delivery or fails.
func next(t *testing.T, c *Client) codec.Delivery {
	t.Helper()
	select {
	case d, ok := <-c.Deliveries():
		if !ok {
			t.Fatalf("deliveries closed: %v", c.Err())
		}
		return d
	case <-time.After(testTimeout):
		t.Fatal("no delivery")
	}
	return codec.Delivery{}
}

func expectSeqs(t *testing.T, c *Client, seqs ...codec.Seq) {
	t.Helper()
	for _, want := range seqs {
		d := next(t, c)
		if d.Seq != want {
			t.Fatalf("got delivery seq %d, want %d", d.Seq, want)
		}
		if want := delivery(want); !reflect.DeepEqual(d, want) {
			t.Fatalf("got delivery %+v, want %+v", d, want)
		}
	}
}

type result struct {
	r   Response
	err error
}

func goDo(ctx context.Context, c *Client, req any) <-chan result {
	ch := make(chan result, 1)
	go func() {
		r, err := c.Do(ctx, req)
		ch <- result{r, err}
	}()
	return ch
}

func goErr(f func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	return ch
}

func recv[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(testTimeout):
		t.Fatal("timed out waiting for a result")
	}
	var zero T
	return zero
}

func TestDoMatchesOutOfOrder(t *testing.T) {
	c, p := dial(t, Options{})
	const n = 20
	results := make([]<-chan result, n)
	for i := range n {
		results[i] = goDo(context.Background(), c, map[string]any{"msgid": 7, "friendid": i})
	}
	var frames []frame
	seen := map[string]bool{}
	for range n {
		f := p.readMsg(codec.MsgAddFriend)
		if len(f.ReqID) == 0 || seen[string(f.ReqID)] {
			t.Fatalf("missing or duplicate reqid in %s", f.raw)
		}
		if _, err := strconv.ParseUint(string(f.ReqID), 10, 64); err != nil {
			t.Fatalf("reqid %s is not numeric", f.ReqID)
		}
		seen[string(f.ReqID)] = true
		frames = append(frames, f)
	}
	for i := len(frames) - 1; i >= 0; i-- { // answer in reverse order
		f := frames[i]
		p.send(ackFor(f, codec.OK, "friend "+strconv.FormatInt(*f.FriendID, 10)))
	}
	for i := range n {
		res := recv(t, results[i])
		if res.err != nil {
			t.Fatalf("Do %d: %v", i, res.err)
		}
		if want := "friend " + strconv.Itoa(i); res.r.ErrMsg != want {
			t.Fatalf("Do %d got response %q, want %q", i, res.r.ErrMsg, want)
		}
		var ack codec.Ack
		if err := res.r.Decode(&ack); err != nil || ack.Ack != codec.MsgAddFriend || ack.ErrMsg != res.r.ErrMsg {
			t.Fatalf("Decode = %+v, %v", ack, err)
		}
		if res.r.Header.MsgID != codec.MsgAck || res.r.Ack != codec.MsgAddFriend || res.r.Err(7) != nil {
			t.Fatalf("bad response %+v", res.r)
		}
	}
}

func TestDoRequestForms(t *testing.T) {
	c, p := dial(t, Options{})
	name := "x"
	forms := []any{
		codec.Request{MsgID: codec.MsgSignup, Name: &name, ReqID: json.RawMessage(`"theirs"`)},
		&codec.Request{MsgID: codec.MsgSignup, Name: &name},
		json.RawMessage(` {"msgid":4,"name":"x"} `),
		[]byte(`{"msgid":4,"name":"x"}`),
		struct {
			MsgID int    `json:"msgid"`
			Name  string `json:"name"`
		}{4, "x"},
		map[string]any{"msgid": 4, "name": "x"},
	}
	for i, form := range forms {
		res := goDo(context.Background(), c, form)
		f := p.readMsg(codec.MsgSignup)
		if f.Name == nil || *f.Name != "x" {
			t.Fatalf("form %d: server got %s", i, f.raw)
		}
		if _, err := strconv.ParseUint(string(f.ReqID), 10, 64); err != nil {
			t.Fatalf("form %d: reqid %s is not ours", i, f.ReqID)
		}
		p.send(codec.SignupAck{MsgID: codec.MsgSignupAck, ReqID: f.ReqID, ID: codec.UserID(i + 1)})
		r := recv(t, res)
		var ack codec.SignupAck
		if r.err != nil || r.r.Decode(&ack) != nil || ack.ID != codec.UserID(i+1) {
			t.Fatalf("form %d: %+v %v", i, ack, r.err)
		}
	}
	if _, err := c.Do(context.Background(), map[string]any{"msgid": 4, "reqid": 1}); err == nil {
		t.Fatal("Do accepted a map with reqid")
	}
	if _, err := c.Do(context.Background(), []int{1}); err == nil {
		t.Fatal("Do accepted a non-object")
	}
}

func TestTypedHelpers(t *testing.T) {
	c, p := dial(t, Options{})
	ctx := context.Background()

	done := goErr(func() error {
		id, err := c.Signup(ctx, "alice", "pw")
		if err == nil && id != 42 {
			err = fmt.Errorf("Signup id = %d", id)
		}
		return err
	})
	f := p.readMsg(codec.MsgSignup)
	if *f.Name != "alice" || *f.Password != "pw" {
		t.Fatalf("signup request %s", f.raw)
	}
	p.send(codec.SignupAck{MsgID: codec.MsgSignupAck, ReqID: f.ReqID, ID: 42})
	if err := recv(t, done); err != nil {
		t.Fatal(err)
	}

	login := make(chan *codec.LoginAck, 1)
	done = goErr(func() error {
		a, err := c.LoginToken(ctx, 42, "tok")
		login <- a
		return err
	})
	f = p.readMsg(codec.MsgLogin)
	if *f.ID != 42 || f.Token == nil || *f.Token != "tok" || f.Password != nil {
		t.Fatalf("login request %s", f.raw)
	}
	p.send(codec.LoginAck{MsgID: codec.MsgLoginAck, ReqID: f.ReqID, ID: 42, Name: "alice", Token: "t2",
		Friends: []codec.Friend{{ID: 7, Name: "bob", State: codec.StateOnline}}})
	if err := recv(t, done); err != nil {
		t.Fatal(err)
	}
	if a := <-login; a.ID != 42 || a.Token != "t2" || len(a.Friends) != 1 || a.Friends[0].Name != "bob" {
		t.Fatalf("LoginAck = %+v", a)
	}

	chatIDs := map[string]bool{}
	for i := range 3 {
		done = goErr(func() error {
			a, err := c.Chat(ctx, 7, "hi")
			if err == nil && (a.Time != "2024-01-02 03:04:05" || a.Ack != codec.MsgOneChat) {
				err = fmt.Errorf("Chat ack = %+v", a)
			}
			return err
		})
		f = p.readMsg(codec.MsgOneChat)
		cid, err := f.ClientMsgIDString()
		if err != nil || cid == "" || chatIDs[cid] || *f.ToID != 7 || *f.Msg != "hi" {
			t.Fatalf("chat %d request %s (clientmsgid %q, %v)", i, f.raw, cid, err)
		}
		chatIDs[cid] = true
		a := ackFor(f, codec.OK, "")
		a.Time = "2024-01-02 03:04:05"
		p.send(a)
		if err := recv(t, done); err != nil {
			t.Fatal(err)
		}
	}

	done = goErr(func() error { _, err := c.ChatWithID(ctx, 8, "again", "retry-1"); return err })
	f = p.readMsg(codec.MsgOneChat)
	if string(f.ClientMsgID) != `"retry-1"` {
		t.Fatalf("ChatWithID request %s", f.raw)
	}
	p.send(ackFor(f, codec.OK, ""))
	if err := recv(t, done); err != nil {
		t.Fatal(err)
	}

	done = goErr(func() error {
		gid, err := c.CreateGroup(ctx, "g", "desc")
		if err == nil && gid != 9 {
			err = fmt.Errorf("CreateGroup gid = %d", gid)
		}
		return err
	})
	f = p.readMsg(codec.MsgCreateGroup)
	if *f.GroupName != "g" || *f.GroupDesc != "desc" {
		t.Fatalf("create group request %s", f.raw)
	}
	a := ackFor(f, codec.OK, "")
	a.GroupID = 9
	p.send(a)
	if err := recv(t, done); err != nil {
		t.Fatal(err)
	}

	done = goErr(func() error { return c.AddGroup(ctx, 9) })
	f = p.readMsg(codec.MsgAddGroup)
	if *f.GroupID != 9 {
		t.Fatalf("add group request %s", f.raw)
	}
	p.send(ackFor(f, codec.OK, ""))
	if err := recv(t, done); err != nil {
		t.Fatal(err)
	}

	done = goErr(func() error { _, err := c.GroupChat(ctx, 9, "hey"); return err })
	f = p.readMsg(codec.MsgGroupChat)
	if cid, _ := f.ClientMsgIDString(); *f.GroupID != 9 || *f.Msg != "hey" || cid == "" || chatIDs[cid] {
		t.Fatalf("group chat request %s", f.raw)
	}
	p.send(ackFor(f, codec.OK, ""))
	if err := recv(t, done); err != nil {
		t.Fatal(err)
	}

	done = goErr(func() error { return c.Ping(ctx) })
	f = p.readMsg(codec.MsgPing)
	p.send(codec.Pong{MsgID: codec.MsgPong, ReqID: f.ReqID})
	if err := recv(t, done); err != nil {
		t.Fatal(err)
	}

	done = goErr(func() error { return c.Logout(ctx) })
	f = p.readMsg(codec.MsgLogout)
	p.send(ackFor(f, codec.OK, ""))
	if err := recv(t, done); err != nil {
		t.Fatal(err)
	}

	// A response of the wrong kind is a protocol error.
	done = goErr(func() error { return c.Ping(ctx) })
	f = p.readMsg(codec.MsgPing)
	p.send(ackFor(f, codec.OK, ""))
	if err := recv(t, done); !errors.Is(err, ErrProtocol) {
		t.Fatalf("mismatched response: err = %v, want ErrProtocol", err)
	}
}

func TestServerError(t *testing.T) {
	c, p := dial(t, Options{})
	ctx := context.Background()

	done := goErr(func() error { return c.AddFriend(ctx, 99) })
	f := p.readMsg(codec.MsgAddFriend)
	p.send(ackFor(f, codec.ErrnoNotFound, "no such user"))
	err := recv(t, done)
	var se *ServerError
	if !errors.As(err, &se) {
		t.Fatalf("err = %v, want *ServerError", err)
	}
	if *se != (ServerError{Ack: codec.MsgAddFriend, Errno: codec.ErrnoNotFound, ErrMsg: "no such user"}) {
		t.Fatalf("ServerError = %+v", *se)
	}
	if ErrnoOf(err) != codec.ErrnoNotFound || !errors.Is(err, ErrNotFound) || errors.Is(err, ErrConflict) {
		t.Fatalf("ErrnoOf/Is wrong for %v", err)
	}
	if !errors.Is(err, &ServerError{Ack: codec.MsgAddFriend, Errno: codec.ErrnoNotFound}) ||
		errors.Is(err, &ServerError{Ack: codec.MsgAddGroup, Errno: codec.ErrnoNotFound}) {
		t.Fatal("Is ignores Ack")
	}
	if !strings.Contains(err.Error(), "no such user") {
		t.Fatalf("message %q lacks errmsg", err)
	}

	// LOGIN_ACK failures carry the request's msgid.
	done = goErr(func() error { _, err := c.Login(ctx, 5, "bad"); return err })
	f = p.readMsg(codec.MsgLogin)
	if *f.ID != 5 || *f.Password != "bad" {
		t.Fatalf("login request %s", f.raw)
	}
	p.send(codec.ErrorResponse{MsgID: codec.MsgLoginAck, ReqID: f.ReqID, Errno: codec.ErrnoAuth, ErrMsg: "wrong password"})
	err = recv(t, done)
	if !errors.As(err, &se) || se.Ack != codec.MsgLogin || se.Errno != codec.ErrnoAuth || !errors.Is(err, ErrAuth) {
		t.Fatalf("login err = %v", err)
	}

	// A failing SIGNUP answered with a generic ACK (e.g. rate limiting).
	done = goErr(func() error { _, err := c.Signup(ctx, "a", "b"); return err })
	f = p.readMsg(codec.MsgSignup)
	p.send(ackFor(f, codec.ErrnoRateLimited, "slow down"))
	if err := recv(t, done); ErrnoOf(err) != codec.ErrnoRateLimited {
		t.Fatalf("signup err = %v", err)
	}

	if ErrnoOf(nil) != codec.OK || ErrnoOf(io.EOF) != NoErrno {
		t.Fatal("ErrnoOf of nil / non-server error")
	}
}

func TestDeliveriesDeduplicated(t *testing.T) {
	c, p := dial(t, Options{})
	p.send(delivery(1), delivery(2), delivery(2), delivery(3), delivery(1))
	expectSeqs(t, c, 1, 2, 3)
	p.send(delivery(4))
	expectSeqs(t, c, 4) // nothing in between
	if c.LastSeq() != 4 {
		t.Fatalf("LastSeq = %d", c.LastSeq())
	}
}

func TestLoginOfflineBeforeLive(t *testing.T) {
	c, p := dial(t, Options{})
	done := goErr(func() error { _, err := c.Login(context.Background(), 1, "pw"); return err })
	f := p.readMsg(codec.MsgLogin)
	// The LOGIN_ACK and the live deliveries reach the client in one segment.
	p.send(codec.LoginAck{MsgID: codec.MsgLoginAck, ReqID: f.ReqID, ID: 1, Name: "alice",
		OfflineMsg: []codec.Delivery{delivery(1), delivery(2), delivery(3)}},
		delivery(3), delivery(4))
	if err := recv(t, done); err != nil {
		t.Fatal(err)
	}
	if n := len(c.Deliveries()); n < 3 {
		t.Fatalf("only %d deliveries queued when Login returned", n)
	}
	expectSeqs(t, c, 1, 2, 3, 4)
	p.send(delivery(5))
	expectSeqs(t, c, 5)

	// Auto-ack: DELIVERED frames are cumulative and reach the last seq.
	var last int64
	for last < 5 {
		f := p.readMsg(codec.MsgDelivered)
		if f.Seq == nil || *f.Seq < last || *f.Seq > 5 || len(f.ReqID) != 0 {
			t.Fatalf("bad DELIVERED %s after %d", f.raw, last)
		}
		last = *f.Seq
	}
}

func TestSetLastSeqCarriesDedup(t *testing.T) {
	c, p := dial(t, Options{})
	c.SetLastSeq(3)
	done := goErr(func() error { _, err := c.Login(context.Background(), 1, "pw"); return err })
	f := p.readMsg(codec.MsgLogin)
	p.send(codec.LoginAck{MsgID: codec.MsgLoginAck, ReqID: f.ReqID,
		OfflineMsg: []codec.Delivery{delivery(2), delivery(4), delivery(3)}}, delivery(5))
	if err := recv(t, done); err != nil {
		t.Fatal(err)
	}
	expectSeqs(t, c, 4, 5)
	var last int64
	for last < 5 {
		f := p.readMsg(codec.MsgDelivered)
		if *f.Seq < last || *f.Seq > 5 {
			t.Fatalf("bad DELIVERED %s after %d", f.raw, last)
		}
		last = *f.Seq
	}
}

func TestManualAck(t *testing.T) {
	c, p := dial(t, Options{ManualAck: true})
	ping := func() {
		t.Helper()
		done := goErr(func() error { return c.Ping(context.Background()) })
		f := p.readMsg(codec.MsgPing) // fails if a DELIVERED comes first
		p.send(codec.Pong{MsgID: codec.MsgPong, ReqID: f.ReqID})
		if err := recv(t, done); err != nil {
			t.Fatal(err)
		}
	}
	p.send(delivery(1), delivery(2))
	expectSeqs(t, c, 1, 2)
	ping() // no DELIVERED without Ack
	c.Ack(1)
	if f := p.readMsg(codec.MsgDelivered); *f.Seq != 1 {
		t.Fatalf("DELIVERED %s, want seq 1", f.raw)
	}
	c.Ack(1) // already acknowledged: nothing is sent
	ping()
	c.Ack(100) // clamped to LastSeq
	if f := p.readMsg(codec.MsgDelivered); *f.Seq != 2 {
		t.Fatalf("DELIVERED %s, want seq 2", f.raw)
	}
	ping()
}

func TestKicked(t *testing.T) {
	c, p := dial(t, Options{})
	pending := goErr(func() error { return c.Ping(context.Background()) })
	p.readMsg(codec.MsgPing)
	p.send(codec.Kicked{MsgID: codec.MsgKicked, ErrMsg: "logged in elsewhere"})
	waitClosed(t, c.Kicked(), "Kicked()")
	waitClosed(t, c.Done(), "Done()")
	if err := c.Err(); !errors.Is(err, ErrKicked) || !strings.Contains(err.Error(), "logged in elsewhere") {
		t.Fatalf("Err() = %v", err)
	}
	if err := recv(t, pending); !errors.Is(err, ErrKicked) {
		t.Fatalf("pending Ping err = %v", err)
	}
	if err := c.Ping(context.Background()); !errors.Is(err, ErrKicked) {
		t.Fatalf("Ping after kick: %v", err)
	}
	waitClosed(t, c.Deliveries(), "Deliveries()")
	if _, err := p.readErr(); err != io.EOF {
		t.Fatalf("server side read after kick: %v, want EOF", err)
	}
	if err := c.Close(); err != nil || !errors.Is(c.Err(), ErrKicked) {
		t.Fatalf("Close = %v, Err = %v", err, c.Err())
	}
}

func TestContextCancel(t *testing.T) {
	var unsolicited = make(chan Response, 4)
	c, p := dial(t, Options{OnUnsolicited: func(r Response) { unsolicited <- r }})
	ctx, cancel := context.WithCancel(context.Background())
	res := goErr(func() error { return c.Ping(ctx) })
	f := p.readMsg(codec.MsgPing)
	cancel()
	if err := recv(t, res); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	// The late answer is not matched to anything, and the client still works.
	p.send(codec.Pong{MsgID: codec.MsgPong, ReqID: f.ReqID})
	r := recv(t, unsolicited)
	if r.Header.MsgID != codec.MsgPong || string(r.Header.ReqID) != string(f.ReqID) {
		t.Fatalf("unsolicited = %+v", r)
	}

	// An already-expired context sends nothing.
	ctx, cancel = context.WithTimeout(context.Background(), -time.Second)
	defer cancel()
	if err := c.Ping(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	res = goErr(func() error { return c.Ping(context.Background()) })
	f = p.readMsg(codec.MsgPing)
	p.send(codec.Pong{MsgID: codec.MsgPong, ReqID: f.ReqID})
	if err := recv(t, res); err != nil {
		t.Fatal(err)
	}
	if c.Err() != nil {
		t.Fatal(c.Err())
	}
}

func TestUnsolicitedAck(t *testing.T) {
	unsolicited := make(chan Response, 4)
	c, p := dial(t, Options{OnUnsolicited: func(r Response) { unsolicited <- r }})
	p.send(codec.Ack{MsgID: codec.MsgAck, Errno: codec.ErrnoBadRequest, ErrMsg: "malformed JSON"})
	r := recv(t, unsolicited)
	if r.Errno != codec.ErrnoBadRequest || r.Header.ReqID != nil || !errors.Is(r.Err(0), ErrBadRequest) {
		t.Fatalf("unsolicited = %+v", r)
	}
	var a codec.Ack
	if err := r.Decode(&a); err != nil || a.ErrMsg != "malformed JSON" {
		t.Fatalf("Decode = %+v, %v", a, err)
	}
	if c.Err() != nil {
		t.Fatal(c.Err())
	}
}

func TestCloseWhileWaiting(t *testing.T) {
	before := runtime.NumGoroutine()
	c, p := dial(t, Options{})
	res := goErr(func() error { return c.Ping(context.Background()) })
	p.readMsg(codec.MsgPing)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, res); !errors.Is(err, ErrClosed) {
		t.Fatalf("pending Ping err = %v, want ErrClosed", err)
	}
	waitClosed(t, c.Done(), "Done()")
	waitClosed(t, c.Deliveries(), "Deliveries()")
	if err := c.Close(); err != nil || c.Err() != ErrClosed {
		t.Fatalf("second Close = %v, Err = %v", err, c.Err())
	}
	if err := c.Ping(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ping after Close = %v", err)
	}
	c.Ack(5) // no-op, must not block or panic
	checkFor(t, testTimeout, func() error {
		if n := runtime.NumGoroutine(); n > before {
			return fmt.Errorf("%d goroutines, %d before", n, before)
		}
		return nil
	})
}

// closeWhenFull dials with room for one delivery, sends ds (the reader
// blocks on the second), and closes the client once the buffer is full.
func closeWhenFull(t *testing.T, ds ...codec.Delivery) *Client {
	t.Helper()
	c, p := dial(t, Options{DeliveryBuffer: 1})
	vs := make([]any, len(ds))
	for i, d := range ds {
		vs[i] = d
	}
	p.send(vs...) // one write
	checkFor(t, testTimeout, func() error {
		if len(c.Deliveries()) != 1 {
			return errors.New("delivery buffer not full yet")
		}
		return nil
	})
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCloseUnblocksFullDeliveries(t *testing.T) {
	c := closeWhenFull(t, delivery(1), delivery(2), delivery(3)) // reader blocks on seq 2
	expectSeqs(t, c, 1)
	waitClosed(t, c.Deliveries(), "Deliveries()")
	if c.LastSeq() != 1 { // seq 2 was never handed out
		t.Fatalf("LastSeq = %d after Close, want 1", c.LastSeq())
	}
}

func TestParseReqID(t *testing.T) {
	for in, want := range map[string]uint64{"0": 0, "17": 17, "18446744073709551615": 1<<64 - 1} {
		if got, ok := parseReqID([]byte(in)); !ok || got != want {
			t.Errorf("parseReqID(%q) = %d, %v", in, got, ok)
		}
	}
	for _, in := range []string{"", `"1"`, "-1", "1.5", "18446744073709551616", "99999999999999999999"} {
		if _, ok := parseReqID([]byte(in)); ok {
			t.Errorf("parseReqID(%q) accepted", in)
		}
	}
}

func TestServerEOF(t *testing.T) {
	c, p := dial(t, Options{})
	res := goErr(func() error { return c.Ping(context.Background()) })
	p.readMsg(codec.MsgPing)
	p.conn.Close()
	if err := recv(t, res); err != io.EOF {
		t.Fatalf("pending Ping err = %v, want io.EOF", err)
	}
	waitClosed(t, c.Done(), "Done()")
	if c.Err() != io.EOF {
		t.Fatalf("Err() = %v", c.Err())
	}
}

func TestProtocolErrors(t *testing.T) {
	tooBig := codec.AppendFrame(nil, []byte(`{"msgid":11,"errmsg":"`+strings.Repeat("x", 100)+`"}`))
	tests := []struct {
		name string
		send []byte
	}{
		{"frame above MaxFrame", tooBig},
		{"empty frame", []byte{0, 0, 0, 0}},
		{"not JSON", codec.AppendFrame(nil, []byte("hello"))},
		{"not an object", codec.AppendFrame(nil, []byte("[1,2]"))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, p := dial(t, Options{MaxFrame: 100})
			p.send(tt.send)
			waitClosed(t, c.Done(), "Done()")
			if !errors.Is(c.Err(), ErrProtocol) {
				t.Fatalf("Err() = %v, want ErrProtocol", c.Err())
			}
		})
	}
}

func TestLargeFrames(t *testing.T) {
	c, p := dial(t, Options{})
	big := strings.Repeat("y", 20000) // larger than the 4 KiB read buffer
	res := goDo(context.Background(), c, map[string]any{"msgid": 13})
	f := p.readMsg(codec.MsgPing)
	d := delivery(1)
	d.Msg = big
	p.send(ackFor(f, codec.ErrnoBadRequest, big), d, delivery(2))
	r := recv(t, res)
	if r.err != nil || r.r.ErrMsg != big {
		t.Fatalf("large response: err %v, errmsg %d bytes", r.err, len(r.r.ErrMsg))
	}
	if got := next(t, c); got.Seq != 1 || got.Msg != big {
		t.Fatalf("large delivery seq %d, %d bytes", got.Seq, len(got.Msg))
	}
	expectSeqs(t, c, 2)
}

func TestKeepAlivePings(t *testing.T) {
	const iv = 50 * time.Millisecond
	c, p := dial(t, Options{PingInterval: iv})
	// Answered pings keep the connection up well past 3 intervals.
	start := time.Now()
	for time.Since(start) < 10*iv {
		f := p.read()
		if f.MsgID != codec.MsgPing || len(f.ReqID) != 0 {
			t.Fatalf("keep-alive frame %s", f.raw)
		}
		p.send(codec.Pong{MsgID: codec.MsgPong})
	}
	if err := c.Err(); err != nil {
		t.Fatalf("connection died despite pongs: %v", err)
	}
	// A silent server is detected.
	waitClosed(t, c.Done(), "Done()")
	if !errors.Is(c.Err(), os.ErrDeadlineExceeded) {
		t.Fatalf("Err() = %v, want a deadline error", c.Err())
	}
}

func TestConcurrentStress(t *testing.T) {
	c, p := dial(t, Options{DeliveryBuffer: 8})
	// Echo server: answers every PING, and interleaves deliveries.
	serverErr := make(chan error, 1)
	const workers, perWorker = 16, 50
	go func() {
		w := bufio.NewWriter(p.conn)
		seq := codec.Seq(0)
		for answered := 0; answered < workers*perWorker; {
			f, err := p.readErr()
			if err != nil {
				serverErr <- err
				return
			}
			if f.MsgID != codec.MsgPing {
				continue // DELIVERED
			}
			seq++
			w.Write(codec.MustMarshal(delivery(seq)))
			w.Write(codec.MustMarshal(codec.Pong{MsgID: codec.MsgPong, ReqID: f.ReqID}))
			if err := w.Flush(); err != nil {
				serverErr <- err
				return
			}
			answered++
		}
		serverErr <- w.Flush()
	}()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Go(func() {
			for range perWorker {
				if err := c.Ping(context.Background()); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for want := codec.Seq(1); want <= workers*perWorker; want++ {
		if d := next(t, c); d.Seq != want {
			t.Fatalf("got seq %d, want %d", d.Seq, want)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := recv(t, serverErr); err != nil {
		t.Fatal(err)
	}
}

func groupDelivery(gid codec.GroupID, gseq codec.Seq) codec.Delivery {
	return codec.Delivery{MsgID: codec.MsgGroupChat, ID: 7, Name: "bob", GroupID: gid,
		Msg: fmt.Sprintf("g%d-%d", gid, gseq), Time: "2024-01-02 03:04:05", GSeq: gseq}
}

// groupKey names one group-log position.
type groupKey struct {
	gid  codec.GroupID
	gseq codec.Seq
}

// expectGroup receives deliveries and checks that they are exactly the
// group deliveries want, in order.
func expectGroup(t *testing.T, c *Client, want ...groupKey) {
	t.Helper()
	for _, w := range want {
		d := next(t, c)
		if exp := groupDelivery(w.gid, w.gseq); !reflect.DeepEqual(d, exp) {
			t.Fatalf("got delivery %+v, want %+v", d, exp)
		}
	}
}

var groupAckRE = regexp.MustCompile(`^\{"msgid":12,"groupid":(\d+),"gseq":(\d+)\}$`)

// readGroupAck reads one frame, which must be exactly
// {"msgid":12,"groupid":G,"gseq":S}, and returns G and S.
func (p *peer) readGroupAck() groupKey {
	p.t.Helper()
	f := p.readMsg(codec.MsgDelivered)
	m := groupAckRE.FindSubmatch(f.raw)
	if m == nil {
		p.t.Fatalf("group DELIVERED %s, want {\"msgid\":12,\"groupid\":G,\"gseq\":S}", f.raw)
	}
	gid, _ := strconv.ParseInt(string(m[1]), 10, 64)
	gseq, _ := strconv.ParseInt(string(m[2]), 10, 64)
	return groupKey{codec.GroupID(gid), codec.Seq(gseq)}
}

// readGroupAcksUntil reads group DELIVERED frames until every group in want
// has been acknowledged through its gseq. Per group the acknowledged gseq
// must never go down nor beyond want.
func (p *peer) readGroupAcksUntil(want map[codec.GroupID]codec.Seq) {
	p.t.Helper()
	got := map[codec.GroupID]codec.Seq{}
	for !maps.Equal(got, want) {
		k := p.readGroupAck()
		if k.gseq < got[k.gid] || k.gseq > want[k.gid] {
			p.t.Fatalf("DELIVERED group %d gseq %d after %d, want at most %d", k.gid, k.gseq, got[k.gid], want[k.gid])
		}
		got[k.gid] = k.gseq
	}
}

// ping makes a PING round trip, failing if the client sends any other
// frame first (such as a DELIVERED).
func (p *peer) ping(c *Client) {
	p.t.Helper()
	done := goErr(func() error { return c.Ping(context.Background()) })
	f := p.readMsg(codec.MsgPing)
	p.send(codec.Pong{MsgID: codec.MsgPong, ReqID: f.ReqID})
	if err := recv(p.t, done); err != nil {
		p.t.Fatal(err)
	}
}

// login logs c in as id; the fake server answers with a LOGIN_ACK followed
// by more frames in the same write.
func (p *peer) login(c *Client, id codec.UserID, more ...any) {
	p.t.Helper()
	done := goErr(func() error { _, err := c.Login(context.Background(), id, "pw"); return err })
	f := p.readMsg(codec.MsgLogin)
	p.send(append([]any{codec.LoginAck{MsgID: codec.MsgLoginAck, ReqID: f.ReqID, ID: id, Name: "u"}}, more...)...)
	if err := recv(p.t, done); err != nil {
		p.t.Fatal(err)
	}
}

func TestGroupDeliveriesDeduplicatedPerGroup(t *testing.T) {
	c, p := dial(t, Options{ManualAck: true})
	p.send(groupDelivery(1, 1), groupDelivery(1, 2), groupDelivery(2, 1), // group 2 has its own gseqs
		groupDelivery(1, 2), groupDelivery(2, 1), groupDelivery(1, 1), // duplicates
		groupDelivery(1, 4), // a gap (e.g. the user's own message 3) is fine
		delivery(1),         // the inbox is numbered apart
		groupDelivery(1, 3), // below the highest: dropped
		groupDelivery(2, 2))
	expectGroup(t, c, groupKey{1, 1}, groupKey{1, 2}, groupKey{2, 1}, groupKey{1, 4})
	expectSeqs(t, c, 1)
	expectGroup(t, c, groupKey{2, 2})

	// A group message stored before group logs carries a seq: it is in
	// the inbox stream, deduplicated by seq only.
	legacy := codec.Delivery{MsgID: codec.MsgGroupChat, ID: 7, Name: "bob", GroupID: 1, Msg: "old", Time: "2024-01-02 03:04:05", Seq: 2}
	p.send(legacy, legacy, delivery(3))
	if d := next(t, c); !reflect.DeepEqual(d, legacy) {
		t.Fatalf("got %+v, want the legacy group delivery %+v", d, legacy)
	}
	expectSeqs(t, c, 3)
	if got, want := c.GroupSeqs(), map[codec.GroupID]codec.Seq{1: 4, 2: 2}; !maps.Equal(got, want) {
		t.Fatalf("GroupSeqs = %v, want %v", got, want)
	}
	if c.LastSeq() != 3 {
		t.Fatalf("LastSeq = %d, want 3", c.LastSeq())
	}
	// The map is the caller's.
	c.GroupSeqs()[1] = 100
	if got := c.GroupSeqs()[1]; got != 4 {
		t.Fatalf("GroupSeqs()[1] = %d after changing a copy, want 4", got)
	}
	p.ping(c) // ManualAck: nothing was acknowledged
}

func TestGroupAutoAck(t *testing.T) {
	c, p := dial(t, Options{})
	p.send(groupDelivery(5, 1), groupDelivery(5, 2), groupDelivery(7, 4))
	expectGroup(t, c, groupKey{5, 1}, groupKey{5, 2}, groupKey{7, 4})
	p.readGroupAcksUntil(map[codec.GroupID]codec.Seq{5: 2, 7: 4})
	p.ping(c) // nothing more

	// A one-to-one delivery is still acknowledged with seq alone.
	p.send(delivery(1))
	expectSeqs(t, c, 1)
	if f := p.readMsg(codec.MsgDelivered); string(f.raw) != `{"msgid":12,"seq":1}` {
		t.Fatalf("DELIVERED %s, want {\"msgid\":12,\"seq\":1}", f.raw)
	}

	// A redelivered duplicate means the server has no acknowledgement for
	// it: it is acknowledged again (though not handed out again).
	p.send(groupDelivery(5, 2))
	if k := p.readGroupAck(); k != (groupKey{5, 2}) {
		t.Fatalf("DELIVERED for the duplicate: %+v, want group 5 gseq 2", k)
	}
	p.ping(c)
	if n := len(c.Deliveries()); n != 0 {
		t.Fatalf("%d deliveries queued, want none", n)
	}

	// SetGroupSeqs after deliveries were received.
	c.SetGroupSeqs(map[codec.GroupID]codec.Seq{5: 9})
	if got, want := c.GroupSeqs(), map[codec.GroupID]codec.Seq{5: 9}; !maps.Equal(got, want) {
		t.Fatalf("GroupSeqs = %v, want %v", got, want)
	}
	p.send(groupDelivery(5, 9), groupDelivery(7, 4), groupDelivery(5, 10))
	expectGroup(t, c, groupKey{7, 4}, groupKey{5, 10}) // group 7 was forgotten
}

func TestAckGroupClamped(t *testing.T) {
	c, p := dial(t, Options{ManualAck: true})
	p.send(groupDelivery(3, 1), groupDelivery(3, 2), groupDelivery(4, 5))
	expectGroup(t, c, groupKey{3, 1}, groupKey{3, 2}, groupKey{4, 5})
	p.ping(c) // no DELIVERED without AckGroup

	c.AckGroup(3, 1)
	if k := p.readGroupAck(); k != (groupKey{3, 1}) {
		t.Fatalf("DELIVERED %+v, want group 3 gseq 1", k)
	}
	c.AckGroup(3, 1) // already acknowledged: nothing is sent
	c.AckGroup(9, 5) // no delivery of group 9: clamped to nothing
	c.AckGroup(4, 0)
	c.AckGroup(4, -1)
	c.Ack(5) // no inbox delivery: clamped to nothing
	p.ping(c)
	c.AckGroup(3, 100) // clamped to GroupSeqs()[3]
	if k := p.readGroupAck(); k != (groupKey{3, 2}) {
		t.Fatalf("DELIVERED %+v, want group 3 gseq 2 (clamped)", k)
	}
	p.ping(c)

	// Redelivered duplicates: group 3's was acknowledged by the
	// application, so it is acknowledged again; group 4's was not.
	p.send(groupDelivery(4, 5), groupDelivery(3, 2))
	if k := p.readGroupAck(); k != (groupKey{3, 2}) {
		t.Fatalf("DELIVERED %+v, want group 3 gseq 2 again", k)
	}
	p.ping(c) // fails if group 4 was acknowledged
	c.AckGroup(4, 5)
	if k := p.readGroupAck(); k != (groupKey{4, 5}) {
		t.Fatalf("DELIVERED %+v, want group 4 gseq 5", k)
	}
	c.Close()
	c.AckGroup(4, 5) // no-op, must not block or panic
}

func TestSetGroupSeqsCarriesDedup(t *testing.T) {
	c, p := dial(t, Options{})
	seqs := map[codec.GroupID]codec.Seq{1: 3, 2: 1}
	c.SetGroupSeqs(seqs)
	seqs[1] = 100 // not kept
	if got, want := c.GroupSeqs(), map[codec.GroupID]codec.Seq{1: 3, 2: 1}; !maps.Equal(got, want) {
		t.Fatalf("GroupSeqs = %v, want %v", got, want)
	}
	p.login(c, 1,
		groupDelivery(1, 2), groupDelivery(1, 3), groupDelivery(2, 1),
		groupDelivery(1, 4), groupDelivery(2, 2), groupDelivery(3, 1))
	expectGroup(t, c, groupKey{1, 4}, groupKey{2, 2}, groupKey{3, 1})
	// The dropped duplicates and the new deliveries are acknowledged.
	p.readGroupAcksUntil(map[codec.GroupID]codec.Seq{1: 4, 2: 2, 3: 1})

	// SetGroupSeqs replaces the whole state.
	c.SetGroupSeqs(map[codec.GroupID]codec.Seq{2: 5, 4: 0})
	if got, want := c.GroupSeqs(), map[codec.GroupID]codec.Seq{2: 5}; !maps.Equal(got, want) {
		t.Fatalf("GroupSeqs = %v, want %v", got, want)
	}
	p.send(groupDelivery(2, 5), groupDelivery(1, 1))
	expectGroup(t, c, groupKey{1, 1})
}

// TestSetGroupSeqsManualAck: with ManualAck, SetGroupSeqs declares those
// messages processed. An AckGroup right after login may be clamped by the
// server (the group's backlog follows LOGIN_ACK), so the duplicates of the
// backlog are acknowledged again as they are dropped.
func TestSetGroupSeqsManualAck(t *testing.T) {
	c, p := dial(t, Options{ManualAck: true})
	c.SetGroupSeqs(map[codec.GroupID]codec.Seq{1: 3})
	p.login(c, 1)
	c.AckGroup(1, 3)
	if k := p.readGroupAck(); k != (groupKey{1, 3}) {
		t.Fatalf("DELIVERED %+v, want group 1 gseq 3", k)
	}
	p.send(groupDelivery(1, 2), groupDelivery(1, 3), groupDelivery(1, 4))
	expectGroup(t, c, groupKey{1, 4})
	p.readGroupAcksUntil(map[codec.GroupID]codec.Seq{1: 3})
	p.ping(c) // gseq 4 is not acknowledged before AckGroup
}

func TestGroupSeqsResetForAnotherUser(t *testing.T) {
	c, p := dial(t, Options{ManualAck: true})
	p.login(c, 1, groupDelivery(1, 5), delivery(2))
	expectGroup(t, c, groupKey{1, 5})
	expectSeqs(t, c, 2)
	c.AckGroup(1, 5)
	if k := p.readGroupAck(); k != (groupKey{1, 5}) {
		t.Fatalf("DELIVERED %+v, want group 1 gseq 5", k)
	}

	// The same user again: the state is kept.
	p.login(c, 1, groupDelivery(1, 5), groupDelivery(1, 6))
	expectGroup(t, c, groupKey{1, 6})
	if got, want := c.GroupSeqs(), map[codec.GroupID]codec.Seq{1: 6}; !maps.Equal(got, want) {
		t.Fatalf("GroupSeqs = %v, want %v", got, want)
	}
	// The duplicate gseq 5 was acknowledged before, so it is acknowledged
	// again.
	if k := p.readGroupAck(); k != (groupKey{1, 5}) {
		t.Fatalf("DELIVERED %+v, want group 1 gseq 5 again", k)
	}

	// Another user: gseqs start afresh, for dedup and acknowledgement.
	p.login(c, 2)
	if got := c.GroupSeqs(); len(got) != 0 {
		t.Fatalf("GroupSeqs = %v after logging in as another user, want none", got)
	}
	if c.LastSeq() != 0 {
		t.Fatalf("LastSeq = %d after logging in as another user, want 0", c.LastSeq())
	}
	p.send(groupDelivery(1, 1))
	expectGroup(t, c, groupKey{1, 1})
	c.AckGroup(1, 1)
	if k := p.readGroupAck(); k != (groupKey{1, 1}) {
		t.Fatalf("DELIVERED %+v, want group 1 gseq 1 for the new user", k)
	}
	p.ping(c)
}

func TestCloseUnblocksFullGroupDeliveries(t *testing.T) {
	c := closeWhenFull(t, groupDelivery(1, 1), groupDelivery(1, 2), groupDelivery(1, 3)) // reader blocks on gseq 2
	expectGroup(t, c, groupKey{1, 1})
	waitClosed(t, c.Deliveries(), "Deliveries()")
	if got, want := c.GroupSeqs(), map[codec.GroupID]codec.Seq{1: 1}; !maps.Equal(got, want) { // gseq 2 was never handed out
		t.Fatalf("GroupSeqs = %v after Close, want %v", got, want)
	}
}

// A request above Options.MaxRequest fails at once with ErrRequestTooLarge
// and is not sent (the server would close the connection without saying
// which request it refused); the connection goes on. '<', '>' and '&' go
// out as themselves, not as six-byte escapes.
func TestRequestTooLarge(t *testing.T) {
	c, p := dial(t, Options{MaxRequest: 200})
	_, err := c.Do(context.Background(), map[string]any{"msgid": codec.MsgOneChat, "toid": 2, "msg": strings.Repeat("x", 200)})
	if !errors.Is(err, ErrRequestTooLarge) || ErrnoOf(err) != codec.ErrnoFrameTooLarge {
		t.Fatalf("a request over MaxRequest: %v", err)
	}
	msg := strings.Repeat("<&>", 50) // 150 bytes; 900 if escaped
	res := goDo(context.Background(), c, map[string]any{"msgid": codec.MsgOneChat, "toid": 2, "msg": msg})
	f := p.readMsg(codec.MsgOneChat)
	if !strings.Contains(string(f.raw), msg) {
		t.Fatalf("the request went out as %s", f.raw)
	}
	p.send(ackFor(f, codec.OK, "ok"))
	if r := recv(t, res); r.err != nil || r.r.Errno != codec.OK {
		t.Fatalf("the next request: %v, errno %d", r.err, r.r.Errno)
	}
}
