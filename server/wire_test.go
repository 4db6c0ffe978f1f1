package server_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chatcluster/chatcluster/client"
	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/conf"
)

// rawLogin signs up name on a raw connection and logs in; it returns the id.
func rawLogin(t *testing.T, r *raw, name string) int {
	t.Helper()
	r.send(map[string]any{"msgid": 4, "name": name, "password": "secret1"})
	id := num(r.mustRead(), "id")
	r.send(map[string]any{"msgid": 1, "id": id, "password": "secret1"})
	if m := r.mustRead(); num(m, "msgid") != 2 || num(m, "errno") != 0 {
		t.Fatalf("login: %v", m)
	}
	return id
}

// TestPipelinedAndSplitFrames: the original handled only the first request of
// a TCP read and died on JSON split across reads.
func TestPipelinedAndSplitFrames(t *testing.T) {
	ts := startServer(t, nil)
	bob := ts.newUser("bob", client.Options{})
	r := ts.raw()
	rawLogin(t, r, "alice")
	// 100 requests in one write, handled in order.
	var burst []byte
	for i := 0; i < 100; i++ {
		body, _ := json.Marshal(map[string]any{"msgid": 6, "toid": bob.id, "msg": fmt.Sprint(i), "reqid": i})
		burst = codec.AppendFrame(burst, body)
	}
	r.write(burst)
	for i := 0; i < 100; i++ {
		if m := r.mustRead(); num(m, "reqid") != i || num(m, "errno") != 0 {
			t.Fatalf("response %d: %v", i, m)
		}
	}
	for i := 0; i < 100; i++ {
		if d := next(t, bob.c); d.Msg != fmt.Sprint(i) {
			t.Fatalf("delivery %d: %+v", i, d)
		}
	}
	// One frame written a byte at a time, then two frames split mid-header.
	one := codec.AppendFrame(nil, []byte(`{"msgid":13,"reqid":"slow"}`))
	for _, b := range one {
		r.write([]byte{b})
		time.Sleep(time.Millisecond)
	}
	if m := r.mustRead(); m["reqid"] != "slow" || num(m, "msgid") != 14 {
		t.Fatalf("slow frame: %v", m)
	}
	two := codec.AppendFrame(codec.AppendFrame(nil, []byte(`{"msgid":13,"reqid":"a"}`)), []byte(`{"msgid":13,"reqid":"b"}`))
	cut := len(two) - len(`{"msgid":13,"reqid":"b"}`) - 2
	r.write(two[:cut])
	time.Sleep(20 * time.Millisecond)
	r.write(two[cut:])
	if a, b := r.mustRead(), r.mustRead(); a["reqid"] != "a" || b["reqid"] != "b" {
		t.Fatalf("split: %v %v", a, b)
	}
}

// TestGarbageThenLogin: ten malformed frames each get errno 3, and the same
// connection then logs in and works.
func TestGarbageThenLogin(t *testing.T) {
	ts := startServer(t, nil)
	r := ts.raw()
	garbage := [][]byte{
		[]byte(`not json`), []byte(`{"msgid":1,`), []byte("\xff\xfe\xfd"), []byte(`[1,2,3]`), []byte(`"string"`),
		[]byte(`{"msgid":"one"}`), []byte(`{"msgid":6.5}`), []byte(`{"msgid":4,"name":7,"password":"secret1"}`),
		[]byte(`{"msgid":1,"id":"me","password":"x"}`), []byte(`{}`),
	}
	for _, g := range garbage {
		r.send(g)
		if m := r.mustRead(); num(m, "errno") != int(codec.ErrnoBadRequest) || m["errmsg"] == "" {
			t.Fatalf("garbage %q: %v", g, m)
		}
	}
	other := ts.newUser("other", client.Options{}) // other connections unaffected
	rawLogin(t, r, "survivor")
	if err := other.c.Ping(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

func TestOversizedAndEmptyFrames(t *testing.T) {
	ts := startServer(t, func(c *conf.Config) { c.MaxFrame = 1024; c.MaxMessage = 512 })
	bystander := ts.newUser("bystander", client.Options{})
	r := ts.raw()
	r.write([]byte{0, 0, 0x10, 0}) // 4096 > 1024
	if m := r.mustRead(); num(m, "msgid") != 11 || num(m, "ack") != 0 || num(m, "errno") != int(codec.ErrnoFrameTooLarge) ||
		!strings.Contains(m["errmsg"].(string), "1024") {
		t.Fatalf("oversized: %v", m)
	}
	r.closed()
	r = ts.raw()
	r.write([]byte{0, 0, 0, 0})
	if m := r.mustRead(); num(m, "errno") != int(codec.ErrnoBadRequest) {
		t.Fatalf("empty: %v", m)
	}
	r.closed()
	if err := bystander.c.Ping(ctxT(t)); err != nil {
		t.Fatalf("other connection hurt: %v", err)
	}
}

// TestFrameAboveMaxPendingBytes: a frame larger than max-pending-bytes
// (conf refuses such a setting, server.Config does not) is still handled
// on a connection with nothing pending, instead of errno 8 ("retry later")
// at every retry.
func TestFrameAboveMaxPendingBytes(t *testing.T) {
	ts := startServer(t, func(c *conf.Config) { c.MaxPendingBytes = 1000 })
	if err := ts.Cfg.Validate(); err == nil || !strings.Contains(err.Error(), "max-pending-bytes must be at least max-frame") {
		t.Fatalf("Validate: %v", err)
	}
	alice := ts.newUser("alice", client.Options{})
	if _, err := alice.c.Chat(ctxT(t), alice.id, strings.Repeat("a", 4000)); err != nil {
		t.Fatalf("a lone 4,000-byte request with max-pending-bytes 1000: %v", err)
	}
}

func TestIdleTimeout(t *testing.T) {
	ts := startServer(t, func(c *conf.Config) { c.IdleTimeout = 400 * time.Millisecond })
	idle := ts.raw()
	pinger := ts.dial(client.Options{})
	start := time.Now()
	for time.Since(start) < 1200*time.Millisecond {
		if err := pinger.Ping(ctxT(t)); err != nil {
			t.Fatalf("pinging connection closed: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	idle.closed()
	if time.Since(start) > 5*time.Second {
		t.Fatal("idle connection not closed in time")
	}
}

func TestRateLimit(t *testing.T) {
	ts := startServer(t, func(c *conf.Config) { c.Rate = 5; c.RateBurst = 5 })
	r := ts.raw()
	var burst []byte
	for i := 0; i < 20; i++ {
		burst = codec.AppendFrame(burst, []byte(fmt.Sprintf(`{"msgid":13,"reqid":%d}`, i)))
	}
	r.write(burst)
	limited, ok := 0, 0
	for i := 0; i < 20; i++ {
		m := r.mustRead()
		if num(m, "reqid") != i {
			t.Fatalf("response %d answers reqid %v: responses out of order", i, m["reqid"])
		}
		switch {
		case num(m, "msgid") == 14:
			ok++
		case num(m, "errno") == int(codec.ErrnoRateLimited) && num(m, "ack") == 13:
			limited++
		default:
			t.Fatalf("unexpected %v", m)
		}
	}
	if ok < 5 || limited == 0 || ok+limited != 20 {
		t.Fatalf("ok %d limited %d", ok, limited)
	}
	time.Sleep(300 * time.Millisecond) // tokens refill: the connection works again
	r.send(map[string]any{"msgid": 13, "reqid": "after"})
	if m := r.mustRead(); m["reqid"] != "after" || num(m, "msgid") != 14 {
		t.Fatalf("after refill: %v", m)
	}
}

// TestStoreUnavailable: with the database gone, requests get errno 10
// promptly and the connection stays usable.
func TestStoreUnavailable(t *testing.T) {
	ts := startServer(t, nil)
	alice := ts.newUser("alice", client.Options{})
	bob := ts.newUser("bob", client.Options{})
	ts.App.Store.DB().Close()
	start := time.Now()
	_, err := alice.c.Chat(ctxT(t), bob.id+100, "x")
	wantErrno(t, err, codec.ErrnoUnavailable)
	_, err = alice.c.CreateGroup(ctxT(t), "g", "")
	wantErrno(t, err, codec.ErrnoUnavailable)
	if time.Since(start) > 5*time.Second {
		t.Fatalf("errno 10 took %v", time.Since(start))
	}
	if err := alice.c.Ping(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

func TestMaxConnections(t *testing.T) {
	ts := startServer(t, func(c *conf.Config) { c.MaxConns = 2 })
	a, b := ts.raw(), ts.raw()
	a.send(map[string]any{"msgid": 13})
	b.send(map[string]any{"msgid": 13})
	a.mustRead()
	b.mustRead()
	third := ts.raw()
	if m := third.mustRead(); num(m, "errno") != int(codec.ErrnoUnavailable) {
		t.Fatalf("third connection: %v", m)
	}
	third.closed()
	a.c.Close()
	checkFor(t, 5*time.Second, func() error { // a slot is free again
		r := ts.raw()
		r.send(map[string]any{"msgid": 13, "reqid": 1})
		m, err := r.read()
		r.c.Close()
		if err != nil || num(m, "msgid") != 14 {
			return fmt.Errorf("got %v %v", m, err)
		}
		return nil
	})
}

// TestPendingLimit: requests beyond MaxPending queued on one connection get
// errno 8, each still answered once, and the connection keeps working.
func TestPendingLimit(t *testing.T) {
	ts := startServer(t, func(c *conf.Config) { c.MaxPending = 2; c.Rate = -1; c.BcryptCost = 8 })
	r := ts.raw()
	var burst []byte
	for i := 0; i < 10; i++ { // each signup hashes for a long while
		burst = codec.AppendFrame(burst, []byte(fmt.Sprintf(`{"msgid":4,"name":"n%d","password":"secret1","reqid":%d}`, i, i)))
	}
	r.write(burst)
	ok, limited := 0, 0
	for i := 0; i < 10; i++ {
		m := r.mustRead()
		switch {
		case num(m, "msgid") == 5 && num(m, "errno") == 0:
			ok++
		case num(m, "msgid") == 11 && num(m, "errno") == int(codec.ErrnoRateLimited) && num(m, "ack") == 4:
			limited++
		default:
			t.Fatalf("unexpected %v", m)
		}
	}
	if ok < 1 || limited < 1 {
		t.Fatalf("ok %d, limited %d", ok, limited)
	}
	r.send(map[string]any{"msgid": 13, "reqid": "still"})
	if m := r.mustRead(); m["reqid"] != "still" {
		t.Fatalf("after the burst: %v", m)
	}
}

// TestRefusalsWithinMaxOutbound: a client that pipelines requests past
// MaxPending and reads nothing is closed as a slow consumer once its
// refusals (answered straight from the event loop) pass MaxOutbound, as
// with any other answer; the server does not buffer them without bound.
func TestRefusalsWithinMaxOutbound(t *testing.T) {
	ts := startServer(t, func(c *conf.Config) {
		c.MaxPending = 1
		c.Rate = -1
		c.BcryptCost = 14 // the signups below keep the connection's queue full for a second or more
		c.MaxOutbound = 64 << 10
	})
	r := ts.raw()
	var burst []byte
	for i := 0; i < 3; i++ {
		burst = codec.AppendFrame(burst, []byte(fmt.Sprintf(`{"msgid":4,"name":"slow%d","password":"secret1"}`, i)))
	}
	r.write(burst)
	ping := codec.AppendFrame(nil, []byte(`{"msgid":13,"reqid":123456}`))
	chunk := bytes.Repeat(ping, 4096) // ~130 KB of requests, ~400 KB of refusals
	r.c.SetWriteDeadline(time.Now().Add(20 * time.Second))
	closed := false
	for i := 0; i < 400 && !closed; i++ { // up to ~52 MB of requests
		if _, err := r.c.Write(chunk); err != nil {
			closed = true
		}
	}
	if !closed {
		// The server read every request and held every refusal, or
		// closed only when a signup's answer went out.
		t.Fatal("52 MB of requests went in without the connection being closed")
	}
	checkFor(t, 5*time.Second, func() error {
		if !ts.Logged("closing slow consumer") {
			return errors.New("not closed as a slow consumer")
		}
		return nil
	})
}

// rate-burst 0 (the default) admits a burst of twice the rate.
func TestRateBurstDefault(t *testing.T) {
	ts := startServer(t, func(c *conf.Config) { c.Rate = 5; c.RateBurst = 0 })
	r := ts.raw()
	var burst []byte
	for i := range 20 {
		burst = codec.AppendFrame(burst, fmt.Appendf(nil, `{"msgid":13,"reqid":%d}`, i))
	}
	r.write(burst)
	ok := 0
	for range 20 {
		if num(r.mustRead(), "msgid") == int(codec.MsgPong) {
			ok++
		}
	}
	if ok < 10 || ok > 12 { // twice the rate, and a token or two refilled meanwhile
		t.Fatalf("%d of a burst of 20 admitted at rate 5 with the default burst; want 10", ok)
	}
}

// An error answer to a malformed request keeps its place behind the ACKs
// of the sends before it (PROTOCOL.md 4.1), whatever kind it is.
func TestErrorsKeepRequestOrder(t *testing.T) {
	ts := startServer(t, nil)
	bob := ts.newUser("bob", client.Options{})
	r := ts.raw()
	rawLogin(t, r, "alice")
	for _, second := range []string{
		`{"msgid":6,"reqid":2,"toid":"2","msg":"x"}`,
		`{"msgid":10,"reqid":2,"groupid":[1],"msg":"x"}`,
		`{"msgid":12,"reqid":2,"gseq":1}`,
		fmt.Sprintf("{\"msgid\":6,\"reqid\":2,\"toid\":%d,\"msg\":\"\xff\"}", bob.id),
		`{"msgid":6,"reqid":2,`,
	} {
		for range 5 {
			buf := codec.AppendFrame(nil, fmt.Appendf(nil, `{"msgid":6,"reqid":1,"toid":%d,"msg":"hello"}`, bob.id))
			r.write(codec.AppendFrame(buf, []byte(second)))
			if m := r.mustRead(); num(m, "reqid") != 1 || num(m, "errno") != 0 {
				t.Fatalf("after a send and %s, the first answer is %v", second, m)
			}
			if m := r.mustRead(); num(m, "errno") != int(codec.ErrnoBadRequest) {
				t.Fatalf("%s answered %v", second, m)
			}
		}
	}
}

// A request that is not valid UTF-8 is answered in its own form (a LOGIN
// with LOGIN_ACK) with its reqid; one whose reqid is the invalid part
// gets no reqid back.
func TestInvalidUTF8Answered(t *testing.T) {
	ts := startServer(t, nil)
	r := ts.raw()
	r.send([]byte("{\"msgid\":1,\"reqid\":8,\"id\":1,\"password\":\"caf\xe9\"}"))
	if m := r.mustRead(); num(m, "msgid") != 2 || num(m, "reqid") != 8 || num(m, "errno") != int(codec.ErrnoBadRequest) {
		t.Fatalf("LOGIN: %v", m)
	}
	r.send([]byte("{\"msgid\":13,\"reqid\":\"\xff\"}"))
	if m := r.mustRead(); num(m, "ack") != 13 || m["reqid"] != nil || num(m, "errno") != int(codec.ErrnoBadRequest) {
		t.Fatalf("PING: %v", m)
	}
	r.send(map[string]any{"msgid": 13, "reqid": "after"})
	if m := r.mustRead(); num(m, "msgid") != 14 || m["reqid"] != "after" {
		t.Fatalf("after: %v", m)
	}
}

// Keys are exact: "MSG" is an unknown key, not "msg"; and a reqid comes
// back byte for byte.
func TestExactKeysAndReqID(t *testing.T) {
	ts := startServer(t, nil)
	bob := ts.newUser("bob", client.Options{})
	r := ts.raw()
	rawLogin(t, r, "alice")
	r.send([]byte(fmt.Sprintf(`{"msgid":6,"reqid":"a<b&c>d","toid":%d,"msg":"visible","MSG":"smuggled"}`, bob.id)))
	body, err := r.readBody()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(body, []byte(`"reqid":"a<b&c>d"`)) || !bytes.Contains(body, []byte(`"errno":0`)) {
		t.Fatalf("ACK %s", body)
	}
	if d := next(t, bob.c); d.Msg != "visible" {
		t.Fatalf("bob got %q", d.Msg)
	}
	r.send([]byte(`{"MsgID":13,"reqid":1}`))
	if m := r.mustRead(); num(m, "errno") != int(codec.ErrnoBadRequest) || num(m, "ack") != 0 {
		t.Fatalf("msgid spelt MsgID: %v", m)
	}
}

// LOGIN_ACK names the server's max-frame, and the client keeps to it: a
// request the server would refuse (closing the connection) fails unsent.
func TestLoginAckMaxFrame(t *testing.T) {
	ts := startServer(t, func(c *conf.Config) { c.MaxFrame = 1024 })
	bob := ts.newUser("bob", client.Options{})
	alice := ts.newUser("alice", client.Options{MaxRequest: 1 << 20})
	if alice.ack.MaxFrame != 1024 {
		t.Fatalf("LOGIN_ACK maxframe %d, want 1024", alice.ack.MaxFrame)
	}
	_, err := alice.c.Chat(ctxT(t), bob.id, strings.Repeat("x", 2000))
	if !errors.Is(err, client.ErrRequestTooLarge) {
		t.Fatalf("chat above max-frame: %v", err)
	}
	if _, err := alice.c.Chat(ctxT(t), bob.id, "small"); err != nil {
		t.Fatalf("the connection after: %v", err)
	}
}
