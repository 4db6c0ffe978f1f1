package store

import (
	"context"
	"sync"
	"time"
)

// maxReadBatch is the most keys one batched read asks for.
const maxReadBatch = 512

// readBatcher coalesces concurrent reads of one kind (a user, an inbox
// state, a friend list) into one query for many keys, as the group commit
// does for writes: a read that arrives while another of its kind is being
// fetched waits for that query to end and goes into the next one, with
// every read that queued meanwhile. A lone read is fetched at once. Every
// read is answered by a query that starts after the read was asked for, so
// a caller reads its own earlier writes. A login storm
// then costs a few queries per batch instead of several per user: on MySQL
// each query costs more to parse, plan and carry than its few rows do.
// One fetch per kind runs at a time, so a query that stalls holds up the
// reads of its kind until the query timeout fails them all, as a stalled
// database would anyway. Safe for concurrent use.
type readBatcher[K comparable, V any] struct {
	// fetch reads keys (distinct, at most maxReadBatch); a key without a
	// row is left out of the map.
	fetch func(ctx context.Context, keys []K) (map[K]V, error)
	// clone, if set, copies a value for each caller: callers of one key in
	// one batch would otherwise share what fetch returned, and a caller
	// may change what it gets.
	clone func(V) V
	// timeout bounds one fetch (the store's query timeout); a fetch serves
	// many callers, so it does not run under any one caller's context.
	timeout time.Duration

	mu      sync.Mutex
	queue   []*readCall[K, V]
	running bool // a goroutine is fetching; it takes the queue next
}

// readCall is one read waiting for its batch.
type readCall[K comparable, V any] struct {
	ctx   context.Context // the caller's: a read it gave up on is not fetched
	key   K
	val   V
	found bool
	err   error
	done  chan struct{}
}

// get reads key: its value and whether it has a row. It returns early,
// with ctx's error, if ctx ends first.
func (b *readBatcher[K, V]) get(ctx context.Context, key K) (V, bool, error) {
	c := &readCall[K, V]{ctx: ctx, key: key, done: make(chan struct{})}
	b.enqueue(c)
	select {
	case <-c.done:
		if b.clone != nil {
			return b.clone(c.val), c.found, c.err
		}
		return c.val, c.found, c.err
	case <-ctx.Done():
		var zero V
		return zero, false, ctx.Err()
	}
}

// getAll is get for many keys at once: they queue together, so they are
// fetched in as few batches as their number allows (one up to
// maxReadBatch), not one after another. It returns the values of the keys
// that have a row.
func (b *readBatcher[K, V]) getAll(ctx context.Context, keys []K) (map[K]V, error) {
	out := make(map[K]V, len(keys))
	if len(keys) == 0 {
		return out, nil
	}
	calls := make([]*readCall[K, V], len(keys))
	for i, k := range keys {
		calls[i] = &readCall[K, V]{ctx: ctx, key: k, done: make(chan struct{})}
	}
	b.enqueue(calls...)
	for _, c := range calls {
		select {
		case <-c.done:
			if c.err != nil {
				return nil, c.err
			}
			if c.found {
				if b.clone != nil {
					c.val = b.clone(c.val)
				}
				out[c.key] = c.val
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return out, nil
}

// enqueue queues calls and starts the fetching if none is running.
func (b *readBatcher[K, V]) enqueue(calls ...*readCall[K, V]) {
	b.mu.Lock()
	b.queue = append(b.queue, calls...)
	start := !b.running
	b.running = true
	b.mu.Unlock()
	if start {
		// On a goroutine of its own, so that the caller, too, stops
		// waiting when its ctx ends.
		go b.drain()
	}
}

// value is get for reads where a key without a row has the zero value,
// with the error as the store returns it (unavailable): zero on error.
func (b *readBatcher[K, V]) value(ctx context.Context, key K) (V, error) {
	v, _, err := b.get(ctx, key)
	if err != nil {
		var zero V
		return zero, unavailable(err)
	}
	return v, nil
}

// drain fetches batches until the queue is empty.
func (b *readBatcher[K, V]) drain() {
	for b.fetchQueued() {
	}
}

// fetchQueued fetches up to maxReadBatch queued reads (those whose caller
// still waits) and answers them. It reports whether more are queued; if
// none are, the fetching stops (the next read starts it again).
func (b *readBatcher[K, V]) fetchQueued() (more bool) {
	b.mu.Lock()
	n := min(len(b.queue), maxReadBatch)
	calls := b.queue[:n:n]
	b.queue = append([]*readCall[K, V](nil), b.queue[n:]...)
	b.mu.Unlock()

	keys := make([]K, 0, len(calls))
	seen := make(map[K]bool, len(calls))
	for _, c := range calls {
		if err := c.ctx.Err(); err != nil {
			// Not fetched: its caller gave up. It may still read done
			// before its ctx, so it must not read "no row".
			c.err = err
			continue
		}
		if !seen[c.key] {
			seen[c.key] = true
			keys = append(keys, c.key)
		}
	}
	if len(keys) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
		vals, err := b.fetch(ctx, keys)
		cancel()
		for _, c := range calls {
			if c.err == nil {
				c.val, c.found = vals[c.key]
				c.err = err
			}
		}
	}
	for _, c := range calls {
		close(c.done)
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.queue) == 0 {
		b.running = false
		return false
	}
	return true
}
