package server_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/chatcluster/chatcluster/client"
	"github.com/chatcluster/chatcluster/codec"
)

// TestGracefulShutdownLosesNothing stops the server while senders are busy,
// restarts it on the same database and checks that the recipient receives
// every message whose sender got an ACK, exactly once and in seq order.
func TestGracefulShutdownLosesNothing(t *testing.T) {
	ts := startServer(t, nil)
	const senders = 8
	bob := ts.newUser("bob", client.Options{})
	bob.c.Close() // bob is offline: everything goes to his inbox
	var (
		mu    sync.Mutex
		acked = map[string]bool{}
		wg    sync.WaitGroup
	)
	for i := 0; i < senders; i++ {
		u := ts.newUser(fmt.Sprintf("sender%d", i), client.Options{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; ; j++ {
				msg := fmt.Sprintf("%s/%d", u.name, j)
				_, err := u.c.Chat(context.Background(), bob.id, msg)
				if err != nil {
					return // the server went away: this send is unacknowledged
				}
				mu.Lock()
				acked[msg] = true
				mu.Unlock()
			}
		}()
	}
	checkFor(t, 10*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(acked) < 200 {
			return fmt.Errorf("%d acked", len(acked))
		}
		return nil
	})
	ts.stop()
	wg.Wait()
	ts.start()

	c := ts.dial(client.Options{})
	if _, err := c.Login(ctxT(t), bob.id, bob.password); err != nil {
		t.Fatal(err)
	}
	_, last, err := lastSeq(ts, bob.id)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for seq := codec.Seq(1); seq <= last; seq++ {
		d := next(t, c)
		if d.Seq != seq {
			t.Fatalf("seq %d, want %d", d.Seq, seq)
		}
		if got[d.Msg] {
			t.Fatalf("duplicate %q", d.Msg)
		}
		got[d.Msg] = true
	}
	none(t, c)
	missing := 0
	for msg := range acked {
		if !got[msg] {
			missing++
		}
	}
	t.Logf("acked %d, stored and delivered %d, acked but lost %d", len(acked), len(got), missing)
	if missing > 0 {
		t.Fatalf("%d acknowledged messages lost", missing)
	}
}

func lastSeq(ts *testServer, uid codec.UserID) (acked, last codec.Seq, err error) {
	last, acked, err = ts.App.Store.InboxState(context.Background(), uid)
	return acked, last, err
}
