package service

import (
	"sync"

	"github.com/chatcluster/chatcluster/codec"
)

const hubShards = 64

// hub maps logged-in users to their session on this node, sharded so that
// logins and deliveries to different users rarely share a lock. Safe for
// concurrent use.
type hub struct {
	shards [hubShards]struct {
		sync.RWMutex
		m     map[codec.UserID]*Session
		locks map[codec.UserID]*userLock // users with a lockUser held or awaited
	}
}

// userLock is one user's lock; refs counts its holders and waiters.
type userLock struct {
	sync.Mutex
	refs int
}

func newHub() *hub {
	h := &hub{}
	for i := range h.shards {
		h.shards[i].m = map[codec.UserID]*Session{}
		h.shards[i].locks = map[codec.UserID]*userLock{}
	}
	return h
}

// lockUser takes uid's lock on this node and returns its unlock. It orders
// a login's hub swap and presence write against the same user's other
// logins and leaves; other users are not held up. The lock is not
// reentrant.
func (h *hub) lockUser(uid codec.UserID) (unlock func()) {
	sh := &h.shards[h.shard(uid)]
	sh.Lock()
	l := sh.locks[uid]
	if l == nil {
		l = &userLock{}
		sh.locks[uid] = l
	}
	l.refs++
	sh.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		sh.Lock()
		if l.refs--; l.refs == 0 {
			delete(sh.locks, uid)
		}
		sh.Unlock()
	}
}

func (h *hub) shard(uid codec.UserID) int { return int(uint64(uid) % hubShards) }

// swap makes s the session of uid and returns the one it replaced, if any.
func (h *hub) swap(uid codec.UserID, s *Session) *Session {
	sh := &h.shards[h.shard(uid)]
	sh.Lock()
	old := sh.m[uid]
	sh.m[uid] = s
	sh.Unlock()
	return old
}

// replace makes next the session of uid if it is still cur.
func (h *hub) replace(uid codec.UserID, cur, next *Session) bool {
	sh := &h.shards[h.shard(uid)]
	sh.Lock()
	defer sh.Unlock()
	if sh.m[uid] != cur {
		return false
	}
	sh.m[uid] = next
	return true
}

// remove drops uid's entry if it is still s; it reports whether it did.
func (h *hub) remove(uid codec.UserID, s *Session) bool {
	sh := &h.shards[h.shard(uid)]
	sh.Lock()
	defer sh.Unlock()
	if sh.m[uid] != s {
		return false
	}
	delete(sh.m, uid)
	return true
}

func (h *hub) get(uid codec.UserID) *Session {
	sh := &h.shards[h.shard(uid)]
	sh.RLock()
	s := sh.m[uid]
	sh.RUnlock()
	return s
}

// each calls fn for every session; fn must not call back into the hub.
func (h *hub) each(fn func(*Session)) {
	for i := range h.shards {
		sh := &h.shards[i]
		sh.RLock()
		list := make([]*Session, 0, len(sh.m))
		for _, s := range sh.m {
			list = append(list, s)
		}
		sh.RUnlock()
		for _, s := range list {
			fn(s)
		}
	}
}

// nameCache remembers user names (which never change) so that one-to-one
// sends need no store read to check the recipient exists.
type nameCache = boundedCache[codec.UserID, string]

func newNameCache(perShard int) *nameCache { return newBoundedCache[codec.UserID, string](perShard) }

// memberCache remembers the member ids of groups so that a group send needs
// no store read. Members never leave a group, so a cached list lacks at
// most members who joined since; each commit counts its groups' members
// and reads the list again when it grew (Node.groupEntries). The cached
// slices must not be changed.
type memberCache = boundedCache[codec.GroupID, []codec.UserID]

func newMemberCache(perShard int) *memberCache {
	return newBoundedCache[codec.GroupID, []codec.UserID](perShard)
}

// boundedCache is a map sharded like the hub and bounded: a full shard is
// emptied. Safe for concurrent use.
type boundedCache[K ~int64, V any] struct {
	shards [hubShards]struct {
		sync.RWMutex
		m map[K]V
	}
	perShard int
}

func newBoundedCache[K ~int64, V any](perShard int) *boundedCache[K, V] {
	c := &boundedCache[K, V]{perShard: perShard}
	for i := range c.shards {
		c.shards[i].m = map[K]V{}
	}
	return c
}

func (c *boundedCache[K, V]) get(k K) (V, bool) {
	sh := &c.shards[uint64(k)%hubShards]
	sh.RLock()
	v, ok := sh.m[k]
	sh.RUnlock()
	return v, ok
}

func (c *boundedCache[K, V]) put(k K, v V) {
	sh := &c.shards[uint64(k)%hubShards]
	sh.Lock()
	if len(sh.m) >= c.perShard {
		clear(sh.m)
	}
	sh.m[k] = v
	sh.Unlock()
}
