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
// record with the same level and message per interval, and adds to the
// next one it passes "suppressed": how many it dropped since the last.
// What it dropped of a message that does not come again is reported all
// the same, as the message alone with "suppressed", once its interval is
// over and anything is logged. Records below Warn all pass. Safe for
// concurrent use; the handlers WithAttrs and WithGroup derive share the
// counts (a summary goes out through the handler that logs at the time).
type throttle struct {
	next     slog.Handler
	interval time.Duration
	now      func() time.Time
	st       *throttleState
}

type throttleState struct {
	mu    sync.Mutex
	seen  map[throttleKey]*throttled
	sweep time.Time // when to look for drops left to report next
}

type throttleKey struct {
	level slog.Level
	msg   string
}

type throttled struct {
	passed  time.Time // when the last record with the message was passed on
	dropped int       // records with it dropped since
}

func newThrottle(next slog.Handler, interval time.Duration, now func() time.Time) *throttle {
	return &throttle{next: next, interval: interval, now: now, st: &throttleState{seen: map[throttleKey]*throttled{}}}
}

func (t *throttle) Enabled(ctx context.Context, l slog.Level) bool { return t.next.Enabled(ctx, l) }

func (t *throttle) Handle(ctx context.Context, r slog.Record) error {
	now := t.now()
	t.st.mu.Lock()
	k := throttleKey{r.Level, r.Message}
	summaries := t.sweepLocked(now, k)
	pass, dropped := true, 0
	if r.Level >= slog.LevelWarn {
		e := t.st.seen[k]
		switch {
		case e != nil && now.Sub(e.passed) < t.interval:
			e.dropped++
			pass = false
		case e != nil:
			dropped = e.dropped
			e.passed, e.dropped = now, 0
		default:
			if len(t.st.seen) >= maxThrottled {
				clear(t.st.seen) // what it dropped goes unreported
			}
			t.st.seen[k] = &throttled{passed: now}
		}
	}
	t.st.mu.Unlock()
	for _, sr := range summaries {
		if err := t.next.Handle(ctx, sr); err != nil {
			return err
		}
	}
	if !pass {
		return nil
	}
	if dropped > 0 {
		r = r.Clone()
		r.AddAttrs(slog.Int("suppressed", dropped))
	}
	return t.next.Handle(ctx, r)
}

// sweepLocked returns, at most once an interval, a record for each message
// but current's whose interval is over with records dropped, and counts
// them reported (current's next record carries its own count).
func (t *throttle) sweepLocked(now time.Time, current throttleKey) []slog.Record {
	if now.Before(t.st.sweep) {
		return nil
	}
	t.st.sweep = now.Add(t.interval)
	var out []slog.Record
	for k, e := range t.st.seen {
		if k != current && e.dropped > 0 && now.Sub(e.passed) >= t.interval {
			r := slog.NewRecord(now, k.level, k.msg, 0)
			r.AddAttrs(slog.Int("suppressed", e.dropped))
			out = append(out, r)
			e.passed, e.dropped = now, 0
		}
	}
	return out
}

func (t *throttle) WithAttrs(as []slog.Attr) slog.Handler {
	return &throttle{next: t.next.WithAttrs(as), interval: t.interval, now: t.now, st: t.st}
}

func (t *throttle) WithGroup(name string) slog.Handler {
	return &throttle{next: t.next.WithGroup(name), interval: t.interval, now: t.now, st: t.st}
}
