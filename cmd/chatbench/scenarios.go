package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chatcluster/chatcluster/codec"
)

// signupPool creates the users over Concurrency short-lived connections
// (connect scenario: no user connection may exist while the server's
// baseline RSS is sampled).
func (w *worker) signupPool(ctx context.Context) error {
	w.makeUsers(w.cfg.N)
	t0 := time.Now()
	if w.cfg.BulkDB != "" {
		reused, err := bulkCreate(ctx, w.cfg.BulkDB, w.users, w.cfg.ChildPassword)
		w.res.SignupSeconds, w.res.UsersReused = time.Since(t0).Seconds(), reused
		return err
	}
	conc := min(w.cfg.Concurrency, len(w.users))
	err := parallel(ctx, conc, conc, func(ctx context.Context, k int) error {
		nc, err := w.dial.dial(ctx, w.cfg.Addrs[k%len(w.cfg.Addrs)])
		if err != nil {
			return err
		}
		c := newConn(nc)
		c.start()
		defer c.Close()
		for i := k; i < len(w.users); i += conc {
			rctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
			id, err := c.signup(rctx, w.users[i].name, w.cfg.ChildPassword)
			cancel()
			if err != nil {
				return fmt.Errorf("signup %s: %w", w.users[i].name, hint(err))
			}
			w.users[i].id = id
		}
		return nil
	})
	w.res.SignupSeconds = time.Since(t0).Seconds()
	return err
}

// connectAll opens one connection per user and logs it in (or, against the
// baseline server, sends one PING and reads one answer). Failures are
// counted, not fatal.
func (w *worker) connectAll(ctx context.Context) error {
	if w.cfg.Baseline {
		w.makeUsers(w.cfg.N)
	}
	t0 := time.Now()
	var failed atomic.Int64
	_ = parallel(ctx, len(w.users), w.cfg.Concurrency, func(ctx context.Context, i int) error {
		u := w.users[i]
		addr := w.cfg.Addrs[i%len(w.cfg.Addrs)]
		var err error
		if w.cfg.Baseline {
			err = w.connectBaseline(ctx, u, addr)
		} else {
			err = w.connectUser(ctx, u, addr, false, nil)
		}
		if err != nil && u.c != nil {
			u.c.Close()
			u.c = nil
		}
		if err != nil {
			failed.Add(1)
			w.noteErr("%v", err)
		}
		return nil
	})
	w.res.LoginSeconds = time.Since(t0).Seconds()
	w.res.Connected = int(w.connected.Load())
	w.res.ConnFailed = int(failed.Load())
	return ctx.Err()
}

// pingFrame is a PING without reqid.
var pingFrame = []byte{0, 0, 0, 12, '{', '"', 'm', 's', 'g', 'i', 'd', '"', ':', '1', '3', '}'}

func (w *worker) connectBaseline(ctx context.Context, u *user, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	defer cancel()
	nc, err := w.dial.dial(ctx, addr)
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	dl, _ := ctx.Deadline()
	_ = nc.SetDeadline(dl)
	var hdr [codec.HeaderLen]byte
	if _, err := nc.Write(pingFrame); err == nil {
		_, err = io.ReadFull(nc, hdr[:])
	}
	if err == nil {
		_, err = io.CopyN(io.Discard, nc, int64(codec.FrameLen(hdr[:])))
	}
	if err != nil {
		nc.Close()
		return fmt.Errorf("baseline ping: %w", err)
	}
	_ = nc.SetDeadline(time.Time{})
	c := newConn(nc)
	c.start()
	u.c = c
	w.connected.Add(1)
	return nil
}

// setupLogin signs up and logs in every user, keeping the tokens.
func (w *worker) setupLogin(ctx context.Context) error {
	w.makeUsers(w.cfg.N)
	return w.signupAndLogin(ctx, len(w.users))
}

// storm drops every connection at once (or, with KillPID, waits for the
// connections the kill broke) and logs every affected user back in with its
// token, all at the same time, retrying until Timeout.
func (w *worker) storm(ctx context.Context) error {
	t0 := time.Now()
	deadline := t0.Add(w.cfg.Timeout)
	killed := w.cfg.KillPID > 0
	old := make([]*bconn, len(w.users))
	for i, u := range w.users {
		old[i], u.c = u.c, nil
	}
	if !killed {
		var wg sync.WaitGroup
		for _, c := range old {
			wg.Add(1)
			go func() { defer wg.Done(); c.Close() }()
		}
		wg.Wait()
	}
	w.connected.Store(0)
	hist := NewHistogram()
	var (
		stormed, back, failed atomic.Int64
		retries               atomic.Int64
		lastBack              atomic.Int64
		wg                    sync.WaitGroup
	)
	for i, u := range w.users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if killed {
				select {
				case <-old[i].Done():
				case <-time.After(3 * time.Second):
					u.c = old[i] // not on the killed node: keeps its connection
					w.connected.Add(1)
					return
				case <-ctx.Done():
					return
				}
			}
			stormed.Add(1)
			backoff := 20 * time.Millisecond
			for attempt := 0; ; attempt++ {
				if attempt > 0 {
					retries.Add(1)
					sleep := backoff/2 + rand.N(backoff)
					if time.Now().Add(sleep).After(deadline) || ctx.Err() != nil {
						failed.Add(1)
						return
					}
					time.Sleep(sleep)
					backoff = min(2*backoff, time.Second)
				}
				c, err := w.tokenLogin(ctx, u, w.reconnectAddr(i, attempt), deadline)
				if err != nil {
					if attempt == 0 || errors.Is(err, context.DeadlineExceeded) {
						w.noteErr("reconnect %s: %v", u.name, err)
					}
					continue
				}
				u.c = c
				d := time.Since(t0)
				hist.Record(d.Microseconds())
				for {
					m := lastBack.Load()
					if int64(d) <= m || lastBack.CompareAndSwap(m, int64(d)) {
						break
					}
				}
				back.Add(1)
				w.connected.Add(1)
				return
			}
		}()
	}
	wg.Wait()
	w.res.Stormed = int(stormed.Load())
	w.res.Back = int(back.Load())
	w.res.StormFailed = int(failed.Load())
	w.res.Retries = retries.Load()
	w.res.AllBackNanos = lastBack.Load()
	w.res.Reconnect = hist.Snapshot()
	return nil
}

// reconnectAddr is where user i logs back in at its attempt'th try: its own
// address, or with -reconnect-addr the (i+attempt mod len)th of those, so
// a failed attempt moves on to the next.
func (w *worker) reconnectAddr(i, attempt int) string {
	if r := w.cfg.ReconnectAddrs; len(r) > 0 {
		return r[(i+attempt)%len(r)]
	}
	return w.cfg.Addrs[i%len(w.cfg.Addrs)]
}

func (w *worker) tokenLogin(ctx context.Context, u *user, addr string, deadline time.Time) (*bconn, error) {
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	nc, err := w.dial.dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	c := newConn(nc)
	w.receiveHooks(c)
	c.start()
	if _, _, err := c.login(ctx, u.id, "", u.token); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}
