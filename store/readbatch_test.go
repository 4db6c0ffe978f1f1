package store

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// gatedFetch is a readBatcher fetch that records each call's keys and
// holds the first call until gate is closed.
type gatedFetch struct {
	mu    sync.Mutex
	calls [][]int
	gate  chan struct{}
	err   error
}

func (f *gatedFetch) fetch(_ context.Context, keys []int) (map[int]int, error) {
	f.mu.Lock()
	f.calls = append(f.calls, append([]int(nil), keys...))
	first := len(f.calls) == 1
	f.mu.Unlock()
	if first {
		<-f.gate
	}
	out := map[int]int{}
	for _, k := range keys {
		if k >= 0 { // negative keys have no row
			out[k] = 2 * k
		}
	}
	return out, f.err
}

func (f *gatedFetch) callKeys() [][]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]int(nil), f.calls...)
}

func newGated() (*gatedFetch, *readBatcher[int, int]) {
	f := &gatedFetch{gate: make(chan struct{})}
	return f, &readBatcher[int, int]{fetch: f.fetch, timeout: 10 * time.Second}
}

// TestReadBatcherCoalesces: reads that arrive while a fetch is in flight
// are not answered by it (it started before they were asked) but all
// together by the next, split at maxReadBatch; a key asked twice is
// fetched once, and a key without a row reads as not found.
func TestReadBatcherCoalesces(t *testing.T) {
	f, b := newGated()
	ctx := context.Background()
	type res struct {
		key, val int
		found    bool
		err      error
	}
	results := make(chan res, 2*maxReadBatch)
	get := func(k int) {
		v, found, err := b.get(ctx, k)
		results <- res{k, v, found, err}
	}
	go get(1) // the first read fetches at once, and blocks on the gate
	waitFor(t, 5*time.Second, "first fetch", func() bool { return len(f.callKeys()) == 1 })
	const queued = maxReadBatch + 10
	for k := 2; k < 2+queued; k++ {
		go get(k)
	}
	go get(-1)
	go get(2) // again
	waitFor(t, 5*time.Second, "reads queued", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.queue) == queued+2
	})
	close(f.gate)
	for i := 0; i < queued+3; i++ {
		r := <-results
		if r.err != nil || r.found != (r.key >= 0) || (r.found && r.val != 2*r.key) {
			t.Fatalf("read %d: %+v", r.key, r)
		}
	}
	calls := f.callKeys()
	if len(calls) != 3 || len(calls[0]) != 1 || calls[0][0] != 1 {
		t.Fatalf("fetch calls %d, first %v; want 3, the first only [1]", len(calls), calls[0])
	}
	// maxReadBatch reads in the second, the rest in the third; a key read
	// twice in one batch is fetched once.
	distinct := map[int]bool{}
	for _, c := range calls[1:] {
		inCall := map[int]bool{}
		for _, k := range c {
			if inCall[k] {
				t.Fatalf("key %d twice in one fetch %v", k, c)
			}
			inCall[k], distinct[k] = true, true
		}
	}
	if len(calls[1]) > maxReadBatch || len(distinct) != queued+1 || len(calls[1])+len(calls[2]) > queued+2 {
		t.Fatalf("second and third fetch: %d and %d keys (%d distinct); want at most %d in one, %d distinct", len(calls[1]), len(calls[2]), len(distinct), maxReadBatch, queued+1)
	}
	waitFor(t, 5*time.Second, "fetching to stop with nothing queued", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return !b.running
	})
	// A lone read afterwards fetches again, at once.
	if v, found, err := b.get(ctx, 7); err != nil || !found || v != 14 {
		t.Fatalf("lone read: %d %v %v", v, found, err)
	}
}

// TestReadBatcherCallerGivesUp: a caller whose context ends stops waiting,
// the one whose read started the fetch too, and a queued read whose caller
// gave up is not fetched; the batch still answers the others. A fetch error
// reaches every read in its batch.
func TestReadBatcherCallerGivesUp(t *testing.T) {
	f, b := newGated()
	f.err = errors.New("boom")
	short := func() context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		t.Cleanup(cancel)
		return ctx
	}
	if _, _, err := b.get(short(), 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("caller whose read started the fetch: %v", err)
	}
	done := make(chan error, 1)
	go func() { _, _, err := b.get(context.Background(), 3); done <- err }()
	if _, _, err := b.get(short(), 2); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("queued caller that gave up: %v", err)
	}
	waitFor(t, 5*time.Second, "reads queued", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.queue) == 2
	})
	close(f.gate)
	if err := <-done; err == nil || err.Error() != "boom" {
		t.Fatalf("fetch error: %v", err)
	}
	waitFor(t, 5*time.Second, "fetching to stop", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return !b.running
	})
	if calls := f.callKeys(); len(calls) != 2 || len(calls[1]) != 1 || calls[1][0] != 3 {
		t.Fatalf("fetches %v: want [1] then [3] (key 2's caller gave up)", calls)
	}
}

// TestReadBatcherGivenUpIsNotAnswered: a queued read whose caller gave up
// before its batch is fetched is answered with the caller's error, never
// with "no row": its caller may see done before its ctx.
func TestReadBatcherGivenUpIsNotAnswered(t *testing.T) {
	f, b := newGated()
	close(f.gate)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	gaveUp := &readCall[int, int]{ctx: ctx, key: 1, done: make(chan struct{})}
	live := &readCall[int, int]{ctx: context.Background(), key: 2, done: make(chan struct{})}
	b.queue = []*readCall[int, int]{gaveUp, live}
	b.running = true
	if b.fetchQueued() {
		t.Fatal("more reads reported queued")
	}
	<-gaveUp.done
	if !errors.Is(gaveUp.err, context.Canceled) || gaveUp.found {
		t.Fatalf("the read given up on: found %v, err %v; want context.Canceled", gaveUp.found, gaveUp.err)
	}
	if live.err != nil || !live.found || live.val != 4 {
		t.Fatalf("the live read: %d, %v, %v", live.val, live.found, live.err)
	}
	if calls := f.callKeys(); len(calls) != 1 || len(calls[0]) != 1 || calls[0][0] != 2 {
		t.Fatalf("fetches %v: want [2]", calls)
	}

	// Alone in its batch, it is answered without a fetch.
	alone := &readCall[int, int]{ctx: ctx, key: 3, done: make(chan struct{})}
	b.queue = []*readCall[int, int]{alone}
	b.fetchQueued()
	if !errors.Is(alone.err, context.Canceled) {
		t.Fatalf("a lone read given up on: err %v; want context.Canceled", alone.err)
	}
}

// TestReadBatcherGetAll: many keys asked at once queue together: one
// fetch up to maxReadBatch of them (duplicates once), with the reads of
// others that queued meanwhile; keys without a row are absent.
func TestReadBatcherGetAll(t *testing.T) {
	f, b := newGated()
	close(f.gate)
	ctx := context.Background()
	keys := []int{1, 2, -3, 2, 7}
	got, err := b.getAll(ctx, keys)
	if err != nil || len(got) != 3 || got[1] != 2 || got[2] != 4 || got[7] != 14 {
		t.Fatalf("getAll(%v) = %v, %v", keys, got, err)
	}
	if calls := f.callKeys(); len(calls) != 1 || len(calls[0]) != 4 {
		t.Fatalf("fetches %v, want one of 4 distinct keys", calls)
	}
	many := make([]int, maxReadBatch+10)
	for i := range many {
		many[i] = i + 100
	}
	if got, err = b.getAll(ctx, many); err != nil || len(got) != len(many) {
		t.Fatalf("getAll of %d keys: %d values, %v", len(many), len(got), err)
	}
	if calls := f.callKeys(); len(calls) != 3 || len(calls[1]) != maxReadBatch || len(calls[2]) != 10 {
		t.Fatalf("fetches of %v keys, want 1+%d+10", len(calls), maxReadBatch)
	}
	if got, err := b.getAll(ctx, nil); err != nil || len(got) != 0 {
		t.Fatalf("getAll(nil) = %v, %v", got, err)
	}
}
