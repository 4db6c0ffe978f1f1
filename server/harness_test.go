package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/chatcluster/chatcluster/client"
	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/conf"
	"github.com/chatcluster/chatcluster/server/servertest"
)

// testServer is a real chatserver on a random loopback port with its own
// SQLite file, plus helpers for these tests.
type testServer struct {
	*servertest.Server
	t *testing.T
}

func startServer(t *testing.T, mutate func(*conf.Config)) *testServer {
	t.Helper()
	return &testServer{Server: servertest.Start(t, mutate), t: t}
}

func (ts *testServer) start() { ts.Start() }
func (ts *testServer) stop()  { ts.Stop() }

func (ts *testServer) dial(opts client.Options) *client.Client {
	ts.t.Helper()
	c, err := client.Dial(context.Background(), ts.Addr, opts)
	if err != nil {
		ts.t.Fatalf("dial: %v", err)
	}
	ts.t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// user is a signed-up, logged-in test user.
type user struct {
	id       codec.UserID
	name     string
	password string
	c        *client.Client
	ack      *codec.LoginAck
}

func (ts *testServer) newUser(name string, opts client.Options) *user {
	ts.t.Helper()
	u := &user{name: name, password: "password-" + name}
	u.c = ts.dial(opts)
	id, err := u.c.Signup(ctxT(ts.t), name, u.password)
	if err != nil {
		ts.t.Fatalf("signup %s: %v", name, err)
	}
	u.id = id
	u.ack, err = u.c.Login(ctxT(ts.t), id, u.password)
	if err != nil {
		ts.t.Fatalf("login %s: %v", name, err)
	}
	return u
}

// relogin connects u again with a new client.
func (ts *testServer) relogin(u *user, opts client.Options) {
	ts.t.Helper()
	u.c = ts.dial(opts)
	var err error
	u.ack, err = u.c.Login(ctxT(ts.t), u.id, u.password)
	if err != nil {
		ts.t.Fatalf("relogin %s: %v", u.name, err)
	}
}

func checkFor(t *testing.T, timeout time.Duration, fn func() error) {
	t.Helper()
	servertest.CheckFor(t, timeout, fn)
}

// next returns the next delivery of c.
func next(t *testing.T, c *client.Client) codec.Delivery {
	t.Helper()
	return servertest.Next(t, c, 10*time.Second)
}

// none asserts that no delivery arrives for a short while.
func none(t *testing.T, c *client.Client) {
	t.Helper()
	servertest.None(t, c, 200*time.Millisecond)
}

func wantErrno(t *testing.T, err error, want codec.Errno) {
	t.Helper()
	if got := client.ErrnoOf(err); got != want {
		t.Fatalf("errno = %d (%v), want %d", got, err, want)
	}
}

// raw is a bare TCP connection speaking frames, for malformed input.
type raw struct {
	t *testing.T
	c net.Conn
}

func (ts *testServer) raw() *raw {
	ts.t.Helper()
	c, err := net.Dial("tcp", ts.Addr)
	if err != nil {
		ts.t.Fatal(err)
	}
	ts.t.Cleanup(func() { c.Close() })
	return &raw{t: ts.t, c: c}
}

func (r *raw) write(b []byte) {
	r.t.Helper()
	if _, err := r.c.Write(b); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

func (r *raw) send(v any) {
	r.t.Helper()
	body, ok := v.([]byte)
	if !ok {
		var err error
		if body, err = json.Marshal(v); err != nil {
			r.t.Fatal(err)
		}
	}
	r.write(codec.AppendFrame(nil, body))
}

// read returns the next frame as a generic object; err is io.EOF when the
// server closed.
func (r *raw) read() (map[string]any, error) {
	body, err := r.readBody()
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, fmt.Errorf("server sent invalid JSON %q: %w", body, err)
	}
	return m, nil
}

// readBody returns the next frame's body as the server wrote it.
func (r *raw) readBody() ([]byte, error) {
	r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var hdr [4]byte
	if _, err := io.ReadFull(r.c, hdr[:]); err != nil {
		return nil, err
	}
	body := make([]byte, codec.FrameLen(hdr[:]))
	if _, err := io.ReadFull(r.c, body); err != nil {
		return nil, err
	}
	return body, nil
}

func (r *raw) mustRead() map[string]any {
	r.t.Helper()
	m, err := r.read()
	if err != nil {
		r.t.Fatalf("read: %v", err)
	}
	return m
}

// closed asserts the server closes the connection.
func (r *raw) closed() {
	r.t.Helper()
	for {
		m, err := r.read()
		if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isReset(err) {
			return
		}
		if err != nil {
			r.t.Fatalf("want close, got %v", err)
		}
		r.t.Logf("frame before close: %v", m)
	}
}

func isReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) && !ne.Timeout()
}

func num(m map[string]any, k string) int {
	f, _ := m[k].(float64)
	return int(f)
}

// startServerB is startServer for benchmarks.
func startServerB(b *testing.B, mutate func(*conf.Config)) *testServer {
	b.Helper()
	return &testServer{Server: servertest.Start(b, mutate)}
}

func codecID(id int64) codec.UserID { return codec.UserID(id) }

// dbTx runs fn in one transaction on the server's database: test setup
// written straight into it, which the protocol would make slow. exec runs
// a statement (failing the test on an error) and returns the id of the
// row it inserted.
func dbTx(t *testing.T, ts *testServer, fn func(exec func(q string, args ...any) int64)) {
	t.Helper()
	ctx := context.Background()
	tx, err := ts.App.Store.DB().BeginTxx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	fn(func(q string, args ...any) int64 {
		res, err := tx.ExecContext(ctx, q, args...)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		id, _ := res.LastInsertId()
		return id
	})
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}
