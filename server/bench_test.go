package server_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/chatcluster/chatcluster/client"
	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/conf"
)

// BenchmarkOneToOne measures delivered one-to-one messages per second on one
// node (embedded SQLite), many pairs sending at once with several requests
// in flight each. b.N is the number of messages.
func BenchmarkOneToOne(b *testing.B) {
	benchChat(b, 200, 8)
}

func benchChat(b *testing.B, pairs, inflight int) {
	ts := startServerB(b, func(c *conf.Config) { c.Rate = -1 })
	type pair struct{ from, to *client.Client }
	ps := make([]pair, pairs)
	ids := make([]int64, pairs)
	ctx := context.Background()
	// A client that cannot be set up fails the benchmark at once.
	user := func(name string) (*client.Client, codec.UserID) {
		c, err := client.Dial(ctx, ts.Addr, client.Options{DeliveryBuffer: 64})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		id, err := c.Signup(ctx, name, "secret1")
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Login(ctx, id, "secret1"); err != nil {
			b.Fatal(err)
		}
		return c, id
	}
	for i := range ps {
		from, _ := user(fmt.Sprintf("f%d", i))
		to, tid := user(fmt.Sprintf("t%d", i))
		ids[i] = int64(tid)
		ps[i] = pair{from, to}
	}
	b.ResetTimer()
	per := b.N/pairs + 1
	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Add(1)
		go func() { // receiver; a message that never comes fails, not hangs
			defer wg.Done()
			for n := 0; n < per; n++ {
				select {
				case <-p.to.Deliveries():
				case <-time.After(30 * time.Second):
					b.Errorf("pair %d: delivery %d of %d did not come within 30 s", i, n+1, per)
					return
				}
			}
		}()
		sem := make(chan struct{}, inflight)
		wg.Add(1)
		go func() {
			defer wg.Done()
			var inner sync.WaitGroup
			for n := 0; n < per; n++ {
				sem <- struct{}{}
				inner.Add(1)
				go func() {
					defer inner.Done()
					defer func() { <-sem }()
					if _, err := p.from.Chat(ctx, codecID(ids[i]), "hello, this is a benchmark message"); err != nil {
						b.Error(err)
					}
				}()
			}
			inner.Wait()
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(per*pairs)/b.Elapsed().Seconds(), "delivered/s")
}

// BenchmarkBigGroupSender: one client in a 10,001-member group pipelines
// 1,000 group messages (100 every 100 ms, within the default rate) while
// another user sends one message to itself. It reports the live heap's
// peak above where it started (a GC and a reading every 50 ms), how long
// the other user's ACK took, and how many of the sends were accepted and
// refused (errno 8): what one connection's sends hold waiting for their
// commit is bounded (by -max-pending-bytes), so the sender is slowed to
// the commit's pace and its excess refused, instead of holding hundreds of
// MiB and delaying everyone's ACKs (session 21: +319 to +572 MiB and 1.1
// to 1.5 s before the bound).
func BenchmarkBigGroupSender(b *testing.B) {
	const members, sends = 10000, 1000
	ts := startServerB(b, nil)
	ctx := context.Background()
	login := func(name string) (*client.Client, codec.UserID) {
		c, err := client.Dial(ctx, ts.Addr, client.Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		id, err := c.Signup(ctx, name, "secret1")
		if err == nil {
			_, err = c.Login(ctx, id, "secret1")
		}
		if err != nil {
			b.Fatal(err)
		}
		return c, id
	}
	owner, ownerID := login("owner")
	gid, err := owner.CreateGroup(ctx, "big", "")
	if err != nil {
		b.Fatal(err)
	}
	for i := range members {
		uid, err := ts.App.Store.CreateUser(ctx, fmt.Sprintf("m%d", i), []byte("x"))
		if err == nil {
			_, err = ts.App.Store.JoinGroup(ctx, gid, uid, 0, 0)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	owner.Close() // the sender is a raw connection of the same user
	other, otherID := login("other")
	var frames []byte
	for i := range sends {
		frames = codec.AppendFrame(frames, fmt.Appendf(nil, `{"msgid":10,"reqid":%d,"groupid":%d,"msg":"x"}`, i+1, gid))
	}
	var peak, ackMs, accepted, refused float64
	b.ResetTimer()
	for range b.N {
		nc, err := net.Dial("tcp", ts.Addr)
		if err != nil {
			b.Fatal(err)
		}
		br := bufio.NewReader(nc)
		readFrame := func() (map[string]any, error) {
			var h [4]byte
			if _, err := io.ReadFull(br, h[:]); err != nil {
				return nil, err
			}
			body := make([]byte, binary.BigEndian.Uint32(h[:]))
			if _, err := io.ReadFull(br, body); err != nil {
				return nil, err
			}
			var m map[string]any
			return m, json.Unmarshal(body, &m)
		}
		_, _ = nc.Write(codec.AppendFrame(nil, fmt.Appendf(nil, `{"msgid":1,"id":%d,"password":"secret1"}`, ownerID)))
		if m, err := readFrame(); err != nil || m["errmsg"] != "ok" {
			b.Fatalf("login: %v %v", m, err)
		}
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		base := ms.HeapAlloc
		stop, sampled := make(chan struct{}), make(chan uint64)
		go func() {
			top := base
			for {
				select {
				case <-stop:
					sampled <- top
					return
				case <-time.After(50 * time.Millisecond):
				}
				runtime.GC()
				runtime.ReadMemStats(&ms)
				top = max(top, ms.HeapAlloc)
			}
		}()
		go func() {
			rest := frames
			for len(rest) > 0 {
				k := 0
				for range 100 {
					k += codec.HeaderLen + codec.FrameLen(rest[k:])
				}
				if _, err := nc.Write(rest[:k]); err != nil {
					return
				}
				rest = rest[k:]
				time.Sleep(100 * time.Millisecond)
			}
		}()
		acked := make(chan time.Duration, 1)
		go func() {
			time.Sleep(500 * time.Millisecond)
			t0 := time.Now()
			if _, err := other.Chat(ctx, otherID, "to myself"); err != nil {
				b.Error(err)
			}
			acked <- time.Since(t0)
		}()
		ok, no := 0, 0
		for ok+no < sends {
			m, err := readFrame()
			if err != nil {
				b.Fatalf("after %d answers: %v", ok+no, err)
			}
			switch {
			case m["msgid"] != float64(codec.MsgAck):
			case m["errno"] == float64(0):
				ok++
			case m["errno"] == float64(codec.ErrnoRateLimited):
				no++
			default:
				b.Fatalf("answer %v", m)
			}
		}
		close(stop)
		top := <-sampled
		peak = max(peak, float64(top-base)/(1<<20))
		ackMs = max(ackMs, float64((<-acked).Microseconds())/1000)
		accepted, refused = accepted+float64(ok), refused+float64(no)
		nc.Close()
	}
	b.ReportMetric(peak, "peak-heap-MiB")
	b.ReportMetric(ackMs, "other-ack-ms")
	b.ReportMetric(accepted/float64(b.N), "accepted/op")
	b.ReportMetric(refused/float64(b.N), "refused/op")
}
