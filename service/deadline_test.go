package service

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestRequestDeadlines(t *testing.T) {
	const timeout = 5 * time.Second
	d := newRequestDeadlines(timeout)
	if d.window != deadlineWindow {
		t.Fatalf("window %v, want %v", d.window, deadlineWindow)
	}
	t0 := time.Now()
	first := d.context(t0)
	// Every request gets at least the timeout and at most one window more.
	for _, off := range []time.Duration{0, time.Millisecond, deadlineWindow / 2, deadlineWindow} {
		now := t0.Add(off)
		ctx := d.context(now)
		if ctx != first {
			t.Errorf("at +%v: a new context inside the window", off)
		}
		dl, ok := ctx.Deadline()
		if !ok || dl.Before(now.Add(timeout)) || dl.After(now.Add(timeout+deadlineWindow)) {
			t.Errorf("at +%v: deadline %v after start, want %v..%v", off, dl.Sub(now), timeout, timeout+deadlineWindow)
		}
	}
	later := t0.Add(deadlineWindow + time.Nanosecond)
	next := d.context(later)
	if next == first {
		t.Fatal("the window's context served a request after the window")
	}
	if dl, _ := next.Deadline(); dl.Before(later.Add(timeout)) {
		t.Errorf("next window's deadline %v after its start", dl.Sub(later))
	}
	if first.Err() != nil {
		t.Errorf("a shared context ended early: %v", first.Err())
	}

	// A short timeout: the window shrinks with it, and the context ends at
	// its deadline without anyone cancelling it.
	short := newRequestDeadlines(20 * time.Millisecond)
	if short.window != 2*time.Millisecond {
		t.Fatalf("window %v for a 20ms timeout", short.window)
	}
	ctx := short.context(time.Now())
	select {
	case <-ctx.Done():
		if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			t.Errorf("ended with %v", ctx.Err())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("shared context never ended")
	}
}
