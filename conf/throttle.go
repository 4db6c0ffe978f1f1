package conf

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// LogRepeatInterval is how often the logger Config.Logger builds passes on
// a warning or error with the same message: during an outage of the
// database or Redis every request, commit and reconnection attempt fails
// alike, and one line a second for each says as much as thousands.
const LogRepeatInterval = time.Second

// maxThrottled bounds the messages a throttle remembers; past it, it
// starts afresh.
const maxThrottled = 1024

// throttle is a slog.Handler that passes on at most one Warn or Error
// record with the same message per interval, and adds to the next one it
// passes "suppressed": how many it dropped since the last. Records below
// Warn all pass. Safe for concurrent use; the handlers WithAttrs and
// WithGroup derive share the count.
type throttle struct {
	next     slog.Handler
	interval time.Duration
	now      func() time.Time
	st       *throttleState
}

type throttleState struct {
	mu   sync.Mutex
	seen map[string]*throttled
}

type throttled struct {
	passed  time.Time // when the last record with the message was passed on
	dropped int       // records with it dropped since
}

func newThrottle(next slog.Handler, interval time.Duration, now func() time.Time) *throttle {
	return &throttle{next: next, interval: interval, now: now, st: &throttleState{seen: map[string]*throttled{}}}
}

func (t *throttle) Enabled(ctx context.Context, l slog.Level) bool { return t.next.Enabled(ctx, l) }

func (t *throttle) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < slog.LevelWarn {
		return t.next.Handle(ctx, r)
	}
	now := t.now()
	t.st.mu.Lock()
	e := t.st.seen[r.Message]
	if e != nil && now.Sub(e.passed) < t.interval {
		e.dropped++
		t.st.mu.Unlock()
		return nil
	}
	if e == nil {
		if len(t.st.seen) >= maxThrottled {
			clear(t.st.seen)
		}
		e = &throttled{}
		t.st.seen[r.Message] = e
	}
	dropped := e.dropped
	e.passed, e.dropped = now, 0
	t.st.mu.Unlock()
	if dropped > 0 {
		r = r.Clone()
		r.AddAttrs(slog.Int("suppressed", dropped))
	}
	return t.next.Handle(ctx, r)
}

func (t *throttle) WithAttrs(as []slog.Attr) slog.Handler {
	return &throttle{next: t.next.WithAttrs(as), interval: t.interval, now: t.now, st: t.st}
}

func (t *throttle) WithGroup(name string) slog.Handler {
	return &throttle{next: t.next.WithGroup(name), interval: t.interval, now: t.now, st: t.st}
}
