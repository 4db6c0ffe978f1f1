// Package pubsub is the bus between chatcluster nodes: it tells the node that
// holds a user's session that the user has new inbox entries, and it keeps
// presence (which users are online). The durable inbox in the store is the
// truth; the bus is only a wake-up, so a lost notice delays a delivery until
// the next resync but never loses it.
//
// Memory is the single-node implementation. Implementations are safe for
// concurrent use.
package pubsub

import (
	"context"
	"errors"
	"sync"

	"github.com/chatcluster/chatcluster/codec"
)

// ErrClosed is returned by a bus after Close.
var ErrClosed = errors.New("pubsub: closed")

// Notice tells the node holding user To about new inbox entries. Deliveries
// holds them in seq order; it may be empty, meaning "read the store".
type Notice struct {
	To         codec.UserID
	Deliveries []codec.Delivery
}

// Handler receives the notices addressed to this node. It must not block.
type Handler func([]Notice)

// Bus carries notices between nodes and tracks presence.
type Bus interface {
	// Subscribe installs the handler for notices to users on this node and
	// the resync function, called whenever notices may have been missed
	// (after the subscription (re)connects). Call once, before Publish.
	Subscribe(h Handler, resync func()) error
	// Publish hands each notice to the node holding its recipient; notices
	// to users online nowhere are dropped.
	Publish(ctx context.Context, notices []Notice) error
	// SetOnline records that uid is online on this node.
	SetOnline(ctx context.Context, uid codec.UserID) error
	// SetOffline records that uid is no longer online on this node.
	SetOffline(ctx context.Context, uid codec.UserID) error
	// Online reports which of uids are online on any node.
	Online(ctx context.Context, uids []codec.UserID) (map[codec.UserID]bool, error)
	// Close stops the bus.
	Close() error
}

const shards = 64

// Memory is the in-process Bus of a single node.
type Memory struct {
	mu      sync.RWMutex
	handler Handler
	closed  bool
	online  [shards]struct {
		sync.RWMutex
		m map[codec.UserID]int // online sessions per user
	}
}

var _ Bus = (*Memory)(nil)

// NewMemory returns an empty in-process bus.
func NewMemory() *Memory {
	m := &Memory{}
	for i := range m.online {
		m.online[i].m = map[codec.UserID]int{}
	}
	return m
}

// Subscribe implements Bus. Memory never misses a notice, so resync is
// never called.
func (m *Memory) Subscribe(h Handler, _ func()) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	m.handler = h
	return nil
}

// Publish implements Bus by calling the handler directly.
func (m *Memory) Publish(_ context.Context, notices []Notice) error {
	m.mu.RLock()
	h, closed := m.handler, m.closed
	m.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	if h != nil && len(notices) > 0 {
		h(notices)
	}
	return nil
}

func (m *Memory) shard(uid codec.UserID) int { return int(uint64(uid) % shards) }

// SetOnline implements Bus.
func (m *Memory) SetOnline(_ context.Context, uid codec.UserID) error {
	s := &m.online[m.shard(uid)]
	s.Lock()
	s.m[uid]++
	s.Unlock()
	return nil
}

// SetOffline implements Bus.
func (m *Memory) SetOffline(_ context.Context, uid codec.UserID) error {
	s := &m.online[m.shard(uid)]
	s.Lock()
	if s.m[uid] <= 1 {
		delete(s.m, uid)
	} else {
		s.m[uid]--
	}
	s.Unlock()
	return nil
}

// Online implements Bus.
func (m *Memory) Online(_ context.Context, uids []codec.UserID) (map[codec.UserID]bool, error) {
	out := make(map[codec.UserID]bool, len(uids))
	for _, uid := range uids {
		s := &m.online[m.shard(uid)]
		s.RLock()
		out[uid] = s.m[uid] > 0
		s.RUnlock()
	}
	return out, nil
}

// Close implements Bus.
func (m *Memory) Close() error {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	return nil
}
