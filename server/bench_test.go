package server_test

import (
	"context"
	"fmt"
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
