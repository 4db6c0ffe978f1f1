package server_test

import (
	"errors"
	"testing"
	"time"

	"github.com/chatcluster/chatcluster/client"
	"github.com/chatcluster/chatcluster/conf"
)

// Workers that were idle for a while hand over to fresh goroutines; the
// pool must keep serving and still stop cleanly.
func TestWorkersServeAfterHandover(t *testing.T) {
	ts := startServer(t, func(c *conf.Config) { c.Workers = 2; c.LogLevel = "debug" })
	u := ts.newUser("handover", client.Options{})
	checkFor(t, 15*time.Second, func() error { // two idle periods of a worker
		if !ts.Logged("idle worker handed over") {
			return errors.New("no worker handed over yet")
		}
		return nil
	})
	for i := 0; i < 3; i++ {
		if err := u.c.Ping(ctxT(t)); err != nil {
			t.Fatalf("ping after handover: %v", err)
		}
	}
	ts.stop()
}
