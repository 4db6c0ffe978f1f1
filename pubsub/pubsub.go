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
	To         codec.UserID     `json:"to"`
	Deliveries []codec.Delivery `json:"d,omitempty"`
}

// Handler is the node's side of the bus. Its methods must not block.
type Handler interface {
	// Deliver hands notices to the sessions on this node and returns the
	// notices whose recipient has no session here.
	Deliver(notices []Notice) (rest []Notice)
	// Kick ends the session of uid on this node if its id is session.
	Kick(uid codec.UserID, session string)
	// Resync makes every session on this node re-read its inbox, because
	// notices may have been lost.
	Resync()
}

// Bus carries notices between nodes and tracks presence.
type Bus interface {
	// Subscribe installs the node's handler. Call once, before anything else.
	Subscribe(h Handler) error
	// Publish delivers notices to the nodes holding their recipients:
	// local ones at once, remote ones asynchronously. Notices to users
	// online nowhere are dropped (the inbox keeps the entries).
	Publish(ctx context.Context, notices []Notice) error
	// SetOnline records session as uid's session, on this node. A session
	// of uid on another node is kicked before it returns. A session string
	// names one login: it must not be used again for a later one.
	SetOnline(ctx context.Context, uid codec.UserID, session string) error
	// SetOffline forgets uid's presence if session is still its session.
	// One that fails may be retried by the bus later.
	SetOffline(ctx context.Context, uid codec.UserID, session string) error
	// Online reports which of uids are online on any live node.
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
		m map[codec.UserID]string // session of each online user
	}
}

var _ Bus = (*Memory)(nil)

// NewMemory returns an empty in-process bus.
func NewMemory() *Memory {
	m := &Memory{}
	for i := range m.online {
		m.online[i].m = map[codec.UserID]string{}
	}
	return m
}

// Subscribe implements Bus.
func (m *Memory) Subscribe(h Handler) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	m.handler = h
	return nil
}

// Publish implements Bus by calling the handler directly; there is no other
// node, so what it does not take is dropped.
func (m *Memory) Publish(_ context.Context, notices []Notice) error {
	m.mu.RLock()
	h, closed := m.handler, m.closed
	m.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	if h != nil && len(notices) > 0 {
		h.Deliver(notices)
	}
	return nil
}

func (m *Memory) shard(uid codec.UserID) int { return int(uint64(uid) % shards) }

// SetOnline implements Bus.
func (m *Memory) SetOnline(_ context.Context, uid codec.UserID, session string) error {
	s := &m.online[m.shard(uid)]
	s.Lock()
	s.m[uid] = session
	s.Unlock()
	return nil
}

// SetOffline implements Bus.
func (m *Memory) SetOffline(_ context.Context, uid codec.UserID, session string) error {
	s := &m.online[m.shard(uid)]
	s.Lock()
	if s.m[uid] == session {
		delete(s.m, uid)
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
		_, out[uid] = s.m[uid]
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
