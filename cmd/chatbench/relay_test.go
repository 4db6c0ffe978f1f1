package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"strconv"
	"testing"

	"github.com/chatcluster/chatcluster/codec"
)

// relayClient is a raw protocol client for the relay's tests.
type relayClient struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

func dialRelay(t *testing.T, addr string) *relayClient {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	return &relayClient{t: t, nc: nc, br: bufio.NewReader(nc)}
}

// do sends body and returns the next frame, decoded.
func (c *relayClient) do(body string) map[string]any {
	c.t.Helper()
	if _, err := c.nc.Write(codec.AppendFrame(nil, []byte(body))); err != nil {
		c.t.Fatal(err)
	}
	return c.next()
}

func (c *relayClient) next() map[string]any {
	c.t.Helper()
	body := readTestFrame(c.t, c.nc, c.br)
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		c.t.Fatalf("%v: %s", err, body)
	}
	return m
}

func wantFields(t *testing.T, got map[string]any, want map[string]any) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v (frame %v)", k, got[k], v, got)
		}
	}
}

func TestRelay(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan int)
	r := newRelay()
	go func() {
		done <- acceptLoop("relay-server", ln, io.Discard, func(nc net.Conn) { r.conn(&relayConn{nc: nc}) })
	}()
	t.Cleanup(func() { _ = ln.Close(); <-done })
	addr := ln.Addr().String()

	a, b := dialRelay(t, addr), dialRelay(t, addr)
	wantFields(t, a.do(`{"msgid":4,"reqid":1,"name":"alice","password":"pw"}`), map[string]any{"msgid": 5.0, "reqid": 1.0, "errno": 0.0, "id": 1.0})
	wantFields(t, a.do(`{"msgid":4,"reqid":2,"name":"bob","password":"pw"}`), map[string]any{"msgid": 5.0, "errno": 0.0, "id": 2.0})
	wantFields(t, a.do(`{"msgid":4,"reqid":3,"name":"bob","password":"pw"}`), map[string]any{"msgid": 5.0, "errno": 7.0})
	// Bad input gets an error answer and the connection keeps working.
	wantFields(t, a.do(`{"msgid":`), map[string]any{"msgid": 11.0, "errno": 3.0})
	wantFields(t, a.do(`{"msgid":6,"reqid":4,"toid":2,"msg":"x"}`), map[string]any{"reqid": 4.0, "errno": 4.0})
	wantFields(t, a.do(`{"msgid":1,"reqid":5,"id":9,"password":"pw"}`), map[string]any{"msgid": 2.0, "errno": 1.0})
	wantFields(t, a.do(`{"msgid":1,"reqid":6,"id":1,"password":"pw"}`), map[string]any{"msgid": 2.0, "reqid": 6.0, "errno": 0.0, "id": 1.0})
	// Nothing is stored: a message to a user who is not connected is refused.
	wantFields(t, a.do(`{"msgid":6,"reqid":7,"toid":2,"msg":"x"}`), map[string]any{"msgid": 11.0, "reqid": 7.0, "ack": 6.0, "errno": 10.0})
	wantFields(t, a.do(`{"msgid":10,"reqid":8,"groupid":1,"msg":"x"}`), map[string]any{"reqid": 8.0, "errno": 3.0})
	wantFields(t, a.do(`{"msgid":13,"reqid":9}`), map[string]any{"msgid": 14.0, "reqid": 9.0})

	wantFields(t, b.do(`{"msgid":1,"reqid":1,"id":2,"password":"pw"}`), map[string]any{"msgid": 2.0, "errno": 0.0, "id": 2.0})
	for i, msg := range []string{"one", "two", "three"} {
		ack := a.do(`{"msgid":6,"reqid":` + strconv.Itoa(10*(i+1)) + `,"toid":2,"msg":"` + msg + `"}`)
		wantFields(t, ack, map[string]any{"msgid": 11.0, "ack": 6.0, "errno": 0.0, "reqid": float64(10 * (i + 1))})
		wantFields(t, b.next(), map[string]any{"msgid": 6.0, "id": 1.0, "toid": 2.0, "msg": msg, "seq": float64(i + 1)})
	}
	// A connection that logs in as another user is no longer the first
	// user's: a message to the first is refused, to the second delivered.
	c := dialRelay(t, addr)
	wantFields(t, c.do(`{"msgid":4,"reqid":1,"name":"carol","password":"pw"}`), map[string]any{"errno": 0.0, "id": 3.0})
	wantFields(t, c.do(`{"msgid":1,"reqid":2,"id":3,"password":"pw"}`), map[string]any{"errno": 0.0, "id": 3.0})
	wantFields(t, c.do(`{"msgid":1,"reqid":3,"id":1,"password":"pw"}`), map[string]any{"errno": 0.0, "id": 1.0})
	wantFields(t, b.do(`{"msgid":6,"reqid":3,"toid":3,"msg":"x"}`), map[string]any{"reqid": 3.0, "errno": 10.0})
	wantFields(t, b.do(`{"msgid":6,"reqid":4,"toid":1,"msg":"to c"}`), map[string]any{"reqid": 4.0, "errno": 0.0})
	wantFields(t, c.next(), map[string]any{"msgid": 6.0, "id": 2.0, "msg": "to c", "seq": 1.0})

	// DELIVERED has no answer: the next frame is the PING's.
	if _, err := b.nc.Write(codec.AppendFrame(nil, []byte(`{"msgid":12,"seq":3}`))); err != nil {
		t.Fatal(err)
	}
	wantFields(t, b.do(`{"msgid":13,"reqid":2}`), map[string]any{"msgid": 14.0, "reqid": 2.0})
}
