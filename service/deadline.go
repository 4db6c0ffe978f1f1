package service

import (
	"context"
	"sync/atomic"
	"time"
)

// requestDeadlines hands out the contexts that bound a request's store
// calls (Config.RequestTimeout). Requests that start within the same window
// share one context instead of each making its own. A context.WithTimeout
// per request (one for Handle, one for a send's enqueue) allocated a
// context and a runtime timer for every chat message, ~4 % of a node's CPU
// flat out (docs/BENCHMARKS-history.md, "Changes in session 7"); a shared
// one costs one per window.
//
// Every request gets at least timeout and at most timeout + window. A
// shared context is never cancelled before its deadline, so whoever holds
// it need not cancel it: its timer ends it, and what database/sql starts
// under it ends when the rows or the transaction close, as before. What
// derives a context from a shared one (database/sql's rows and
// transactions) registers with it under its lock, so a window's requests
// share that lock briefly; on a few cores that costs far less than a timer
// each. Safe for concurrent use.
type requestDeadlines struct {
	timeout, window time.Duration
	cur             atomic.Pointer[sharedDeadline]
}

// sharedDeadline is the context for requests that start until until; its
// deadline is until + timeout.
type sharedDeadline struct {
	until  time.Time
	ctx    context.Context
	cancel context.CancelFunc // kept, never called: the deadline releases it
}

// deadlineWindow is the longest a shared context serves new requests.
const deadlineWindow = 100 * time.Millisecond

func newRequestDeadlines(timeout time.Duration) *requestDeadlines {
	return &requestDeadlines{timeout: timeout, window: min(deadlineWindow, timeout/10)}
}

// context returns the context for a request starting at now.
func (d *requestDeadlines) context(now time.Time) context.Context {
	if c := d.cur.Load(); c != nil && !now.After(c.until) {
		return c.ctx
	}
	c := &sharedDeadline{until: now.Add(d.window)}
	c.ctx, c.cancel = context.WithDeadline(context.Background(), c.until.Add(d.timeout))
	// Two requests may both make one at a window's start: each uses its
	// own, and the last stored serves the window.
	d.cur.Store(c)
	return c.ctx
}
