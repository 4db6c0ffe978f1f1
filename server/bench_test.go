package server_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/chatcluster/chatcluster/client"
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
	for i := range ps {
		from, _ := client.Dial(ctx, ts.Addr, client.Options{DeliveryBuffer: 64})
		to, _ := client.Dial(ctx, ts.Addr, client.Options{DeliveryBuffer: 64})
		fid, err := from.Signup(ctx, fmt.Sprintf("f%d", i), "secret1")
		if err != nil {
			b.Fatal(err)
		}
		tid, _ := to.Signup(ctx, fmt.Sprintf("t%d", i), "secret1")
		from.Login(ctx, fid, "secret1")
		to.Login(ctx, tid, "secret1")
		ids[i] = int64(tid)
		ps[i] = pair{from, to}
		defer from.Close()
		defer to.Close()
	}
	b.ResetTimer()
	per := b.N/pairs + 1
	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Add(1)
		go func() { // receiver
			defer wg.Done()
			for n := 0; n < per; n++ {
				<-p.to.Deliveries()
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
