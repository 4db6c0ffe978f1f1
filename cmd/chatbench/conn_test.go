package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/chatcluster/chatcluster/codec"
)

func TestAppendDelivered(t *testing.T) {
	for _, c := range []struct {
		seq, gid, gseq int64
		want           string
	}{
		{5, 0, 0, `{"msgid":12,"seq":5}`},
		{0, 7, 9, `{"msgid":12,"groupid":7,"gseq":9}`},
		{5, 7, 9, `{"msgid":12,"seq":5,"groupid":7,"gseq":9}`},
	} {
		b := appendDelivered(nil, c.seq, c.gid, c.gseq)
		if string(b) != c.want {
			t.Errorf("appendDelivered(%d, %d, %d) = %s, want %s", c.seq, c.gid, c.gseq, b, c.want)
		}
		req, err := codec.ParseRequest(b)
		if err != nil || req.MsgID != codec.MsgDelivered {
			t.Fatalf("%s: %v", b, err)
		}
		if (c.seq > 0) != (req.Seq != nil) || (c.gid > 0) != (req.GroupID != nil && req.GSeq != nil) {
			t.Errorf("%s parsed as %+v", b, req)
		}
	}
}

// fakeServer is the server end of a net.Pipe.
type fakeServer struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

func (s *fakeServer) send(format string, args ...any) {
	s.t.Helper()
	body := fmt.Appendf(nil, format, args...)
	frame := codec.AppendFrame(nil, body)
	_ = s.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := s.nc.Write(frame); err != nil {
		s.t.Fatal(err)
	}
}

func (s *fakeServer) recv() string {
	s.t.Helper()
	return string(readTestFrame(s.t, s.nc, s.br))
}

// readTestFrame reads the next frame's body from br, the reader of nc,
// within 5 s, or fails t.
func readTestFrame(t testing.TB, nc net.Conn, br *bufio.Reader) []byte {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	body, err := readFrameBody(br)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// readFrameBody reads the next frame's body from br; safe in any goroutine
// (it fails no test).
func readFrameBody(br *bufio.Reader) ([]byte, error) {
	var hdr [codec.HeaderLen]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return nil, err
	}
	body := make([]byte, codec.FrameLen(hdr[:]))
	_, err := io.ReadFull(br, body)
	return body, err
}

// TestConnGroupDeliveriesAndAcks runs a member's connection against a fake
// server: group deliveries by gseq and an own GROUP_CHAT ACK fill the
// member's view of the log, and DELIVERED acknowledges the inbox seq and
// each group's gseq, coalesced, and only what is new.
func TestConnGroupDeliveriesAndAcks(t *testing.T) {
	cli, srv := net.Pipe()
	s := &fakeServer{t: t, nc: srv, br: bufio.NewReader(srv)}
	w, c := groupMember(cli, time.Hour)
	c.start()
	defer c.Close()

	body := func(sender int32, n uint64) []byte { return appendBody(nil, nowNanos(), sender, n, 40) }
	sent := make(chan error, 1)
	go func() { sent <- c.sendChat(true, 7, nowNanos(), 1, body(0, 1), 1) }()
	got := s.recv()
	req, err := codec.ParseRequest([]byte(got))
	if err != nil || req.MsgID != codec.MsgGroupChat || string(req.ReqID) != "1" || req.GroupID == nil || *req.GroupID != 7 || string(req.ClientMsgID) != "1" || req.Msg == nil {
		t.Fatalf("GROUP_CHAT %s: %v", got, err)
	}
	if _, sender, n, ok := parseBody([]byte(*req.Msg)); !ok || sender != 0 || n != 1 {
		t.Fatalf("GROUP_CHAT body %q", *req.Msg)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	s.send(`{"msgid":2,"errno":0,"errmsg":"ok","offlineMsg":[{"msgid":6,"id":50,"name":"o","toid":1,"msg":"%s","time":"t","seq":1}]}`, body(50, 1))
	s.send(`{"msgid":10,"id":2,"name":"a","groupid":7,"msg":"%s","time":"t","gseq":1}`, body(1, 1))
	s.send(`{"msgid":10,"id":2,"name":"a","groupid":7,"msg":"%s","time":"t","gseq":3}`, body(1, 2)) // 2 is ours
	s.send(`{"msgid":11,"reqid":1,"errno":0,"errmsg":"ok","ack":10,"time":"t","gseq":2}`)
	s.send(`{"msgid":6,"id":50,"name":"o","toid":1,"msg":"%s","time":"t","seq":2}`, body(50, 2))
	s.send(`{"msgid":10,"id":3,"name":"b","groupid":9,"msg":"%s","time":"t","gseq":40}`, body(2, 1)) // a group it was not told about
	waitFor(t, func() bool { return w.ledger.Delivered.Load() == 5 && w.ledger.Acked.Load() == 1 })

	// net.Pipe is synchronous: DELIVERED is written while the server reads.
	flush := func() chan struct{} {
		done := make(chan struct{})
		go func() { c.flushAck(); close(done) }()
		return done
	}
	done := flush()
	if got := s.recv(); got != `{"msgid":12,"seq":2,"groupid":7,"gseq":3}` {
		t.Fatalf("first DELIVERED %s", got)
	}
	if got := s.recv(); got != `{"msgid":12,"groupid":9,"gseq":40}` {
		t.Fatalf("second DELIVERED %s", got)
	}
	<-done
	select { // nothing new: no frame, so it returns without the server reading
	case <-flush():
	case <-time.After(5 * time.Second):
		t.Fatal("flushAck with nothing new wrote a frame")
	}
	s.send(`{"msgid":10,"id":2,"name":"a","groupid":7,"msg":"%s","time":"t","gseq":4}`, body(1, 3))
	waitFor(t, func() bool { return w.ledger.Delivered.Load() == 6 })
	done = flush()
	if got := s.recv(); got != `{"msgid":12,"groupid":7,"gseq":4}` {
		t.Fatalf("third DELIVERED %s", got)
	}
	<-done

	l := w.ledger.Counts()
	if l.GSeqHoles != 0 || l.SeqDups != 0 || l.Reorders != 0 || l.SeqGaps != 0 || l.Dups != 0 || l.Foreign != 0 || l.OwnGSeqs != 1 || l.AckErr != 0 {
		t.Fatalf("counts %+v", l)
	}
	if l.Latency.Total != 6 {
		t.Fatalf("latency samples %d", l.Latency.Total)
	}
	// The ACK (errno 0) put the message's counter in the sender's acked set.
	c.lmu.Lock()
	acked := slices.Clone(c.acked.w)
	c.lmu.Unlock()
	if len(acked) != 1 || acked[0] != 1<<1 {
		t.Fatalf("acked set %b, want counter 1 alone", acked)
	}
	gs := c.groupList()
	if len(gs) != 2 || gs[0].gid != 7 || gs[0].trk.checked.Load() != 3 || gs[1].gid != 9 || gs[1].trk.checked.Load() != 1 {
		t.Fatalf("groups %d", len(gs))
	}

	// A redelivered gseq (e.g. after a resend) is a duplicate; a gap that
	// is not the member's own message stays open.
	s.send(`{"msgid":10,"id":2,"name":"a","groupid":7,"msg":"%s","time":"t","gseq":4}`, body(1, 3))
	s.send(`{"msgid":10,"id":2,"name":"a","groupid":7,"msg":"%s","time":"t","gseq":6}`, body(1, 4))
	waitFor(t, func() bool { return w.ledger.Delivered.Load() == 7 && w.ledger.Dups.Load() == 1 })
	if l := w.ledger.Counts(); l.SeqDups != 1 || l.GSeqHoles != 1 {
		t.Fatalf("dup %d holes %d", l.SeqDups, l.GSeqHoles)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(time.Millisecond)
	}
}

// BenchmarkHandleDelivery measures the reader's whole per-delivery path:
// scan, dispatch, order and duplicate checks, latency.
//
//	go test -run '^$' -bench HandleDelivery -benchmem ./cmd/chatbench
func BenchmarkHandleDelivery(b *testing.B) {
	for _, kind := range []string{"inbox", "group"} {
		b.Run(kind, func(b *testing.B) {
			w, c := groupMember(nil, time.Second)
			// Fixed-width zero-padded numbers (both scanners take them),
			// rewritten in place per delivery.
			body := fmt.Appendf(nil, "t=%d;s=3;c=0000000000;", nowNanos())
			body = append(body, bytes.Repeat([]byte("x"), 100-len(body))...)
			var msg []byte
			if kind == "group" {
				msg = fmt.Appendf(nil, `{"msgid":10,"id":2,"name":"user2","groupid":7,"msg":"%s","time":"2026-01-01 00:00:00","gseq":0000000000}`, body)
			} else {
				msg = fmt.Appendf(nil, `{"msgid":6,"id":2,"name":"user2","toid":5,"msg":"%s","time":"2026-01-01 00:00:00","seq":0000000000}`, body)
			}
			seqAt := len(msg) - 1 - 10
			cAt := bytes.Index(msg, []byte(";c=")) + 3
			var f frame
			b.ReportAllocs()
			for i := 1; b.Loop(); i++ {
				putDigits(msg[seqAt:seqAt+10], i)
				putDigits(msg[cAt:cAt+10], i)
				if err := c.handle(msg, &f); err != nil {
					b.Fatal(err)
				}
			}
			if l := w.ledger.Counts(); l.Delivered != int64(b.N) || l.SeqGaps+l.GSeqHoles+l.SeqDups+l.Dups+l.Foreign != 0 {
				b.Fatalf("delivered %d of %d, gaps %d holes %d dups %d/%d foreign %d", l.Delivered, b.N, l.SeqGaps, l.GSeqHoles, l.SeqDups, l.Dups, l.Foreign)
			}
		})
	}
}

// putDigits writes v into dst in decimal, zero-padded to len(dst).
func putDigits(dst []byte, v int) {
	for k := len(dst) - 1; k >= 0; k-- {
		dst[k] = byte('0' + v%10)
		v /= 10
	}
}
