package main

import (
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// TestReconnectAfterRestart stops the server under a running chatclient and
// starts a new one on the same address and database: the client says it
// lost the connection, reconnects by itself with its token, says so in one
// line, runs a command typed while the server was down, receives messages
// sent after the restart and prints no message twice.
func TestReconnectAfterRestart(t *testing.T) {
	ts := startServer(t)
	alice := ts.newUser("alice")
	bob := ts.newUser("bob")
	alice.c.Close()
	p := startProc(t, append(alice.loginArgs(), ts.Addr)...)
	p.waitOut("current login user")
	for i := 1; i <= 3; i++ {
		if _, err := bob.c.Chat(ctxT(t), alice.id, fmt.Sprintf("before restart %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	p.waitOut("bob said: before restart 3\n")

	ts.stop()
	p.waitErr("connection lost; reconnecting…\n")
	p.send(fmt.Sprintf("chat:%d:typed while the server was down", bob.id))
	ts.start()
	reconnected := regexp.MustCompile(`reconnected to ` + regexp.QuoteMeta(ts.Addr) + ` as alice \(resuming after message #(\d+)\)\n`)
	checkFor(t, waitLong, func() error {
		if !reconnected.MatchString(p.err.String()) {
			return fmt.Errorf("no reconnect line in:\n%s", p.err)
		}
		return nil
	})
	p.waitOut(fmt.Sprintf("sent to %d (", bob.id))

	ts.login(bob)
	if d := next(t, bob.c); d.Msg != "typed while the server was down" || d.ID != alice.id {
		t.Fatalf("bob got %+v", d)
	}
	if _, err := bob.c.Chat(ctxT(t), alice.id, "after restart"); err != nil {
		t.Fatal(err)
	}
	p.waitOut("bob said: after restart\n")
	quitPrintedOnce(t, p, "before restart 1", "before restart 2", "before restart 3", "after restart")
	if n := strings.Count(p.err.String(), "\n"); n != 2 {
		t.Errorf("want exactly the two connection lines on stderr, got:\n%s", p.err)
	}
	if m := reconnected.FindStringSubmatch(p.err.String()); m[1] != "3" {
		t.Errorf("resumed after #%s, want #3 (the third message)", m[1])
	}
}

// proxy stands between chatclient and the server like nginx in front of a
// node: cut drops every connection abruptly (as when the node is killed),
// and while dropUp is set the client's bytes are thrown away, so the
// server never hears its DELIVERED acknowledgements.
type proxy struct {
	t      *testing.T
	ln     net.Listener
	target string
	dropUp atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
}

func startProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, ln: ln, target: target}
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.cut()
	})
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) serve() {
	for {
		down, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			down.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, down, up)
		p.mu.Unlock()
		go func() {
			io.Copy(down, up)
			down.Close()
		}()
		go func() {
			buf := make([]byte, 4096)
			for {
				n, err := down.Read(buf)
				if n > 0 && !p.dropUp.Load() {
					if _, werr := up.Write(buf[:n]); werr != nil {
						break
					}
				}
				if err != nil {
					break
				}
			}
			up.Close()
		}()
	}
}

// cut resets every connection through the proxy.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		c.Close()
	}
	p.conns = nil
}

// TestReconnectAfterDrop: the connection is reset (the node behind nginx
// died) after messages were printed whose acknowledgements never reached
// the server. The server sends them again after the reconnect, and
// chatclient drops them: each message is printed exactly once, and the
// acknowledgement sent after the reconnect sticks.
func TestReconnectAfterDrop(t *testing.T) {
	ts := startServer(t)
	px := startProxy(t, ts.Addr)
	alice := ts.newUser("alice")
	bob := ts.newUser("bob")
	p := dropAcksAndCut(t, alice, px, func(body string) error {
		_, err := bob.c.Chat(ctxT(t), alice.id, body)
		return err
	})
	p.waitErr(fmt.Sprintf("reconnected to %s as alice (resuming after message #2)\n", px.addr()))
	if _, err := bob.c.Chat(ctxT(t), alice.id, "after the drop"); err != nil {
		t.Fatal(err)
	}
	p.waitOut("bob said: after the drop\n")
	quitPrintedOnce(t, p, "unacknowledged 1", "unacknowledged 2", "after the drop")
	// Everything printed was acknowledged: the next login has no backlog.
	waitAllAcked(t, ts, alice.id)
	noBacklog(t, ts, alice)
}

// quitPrintedOnce ends chatclient p (end of input), expects exit status 0,
// and expects each of msgs printed exactly once ("said: MSG").
func quitPrintedOnce(t *testing.T, p *proc, msgs ...string) {
	t.Helper()
	p.stdin.Close()
	if code := p.exit(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	out := p.out.String()
	for _, msg := range msgs {
		if n := strings.Count(out, "said: "+msg+"\n"); n != 1 {
			t.Errorf("%q printed %d times", msg, n)
		}
	}
}

// noBacklog logs u in again with a fresh chatclient and expects no
// message printed.
func noBacklog(t *testing.T, ts *testServer, u *user) {
	t.Helper()
	if r := runCC(t, "", append(u.loginArgs(), ts.Addr)...); r.code != 0 || strings.Contains(r.stdout, "said:") {
		t.Fatalf("messages delivered again: %+v", r)
	}
}

// dropAcksAndCut starts chatclient as u through px, has send deliver
// "unacknowledged 1" and "unacknowledged 2" to u (printed as from bob)
// while px drops everything chatclient sends (its acknowledgements), then
// resets the connection and waits for chatclient to notice.
func dropAcksAndCut(t *testing.T, u *user, px *proxy, send func(body string) error) *proc {
	t.Helper()
	u.c.Close()
	p := startProc(t, append(u.loginArgs(), px.addr())...)
	p.waitOut("current login user")
	px.dropUp.Store(true)
	for i := 1; i <= 2; i++ {
		if err := send(fmt.Sprintf("unacknowledged %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	p.waitOut("bob said: unacknowledged 2\n")
	px.dropUp.Store(false)
	px.cut()
	p.waitErr("connection lost; reconnecting…\n")
	return p
}

// TestReconnectAfterDropGroup is TestReconnectAfterDrop for group messages,
// which are numbered in the group's log and whose backlog follows
// LOGIN_ACK: after the reconnect the server sends them again, chatclient
// drops them and acknowledges them (their first acknowledgements were
// lost), so each is printed once and the next login has no backlog.
func TestReconnectAfterDropGroup(t *testing.T) {
	ts := startServer(t)
	px := startProxy(t, ts.Addr)
	alice := ts.newUser("alice")
	bob := ts.newUser("bob")
	gid, err := bob.c.CreateGroup(ctxT(t), "ops", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.c.AddGroup(ctxT(t), gid); err != nil {
		t.Fatal(err)
	}
	p := dropAcksAndCut(t, alice, px, func(body string) error {
		_, err := bob.c.GroupChat(ctxT(t), gid, body)
		return err
	})
	p.waitErr(fmt.Sprintf("reconnected to %s as alice (", px.addr()))
	quitPrintedOnce(t, p, "unacknowledged 1", "unacknowledged 2")
	line := regexp.MustCompile(fmt.Sprintf(`(?m)^group \[%d\] \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[%d\]bob said: unacknowledged \d$`, gid, bob.id))
	if n := len(line.FindAllString(p.out.String(), -1)); n != 2 {
		t.Errorf("%d group lines printed, want 2:\n%s", n, p.out)
	}
	// Everything printed was acknowledged: the next login has no backlog.
	waitGroupAcked(t, ts, alice.id, gid, 2)
	noBacklog(t, ts, alice)
}
