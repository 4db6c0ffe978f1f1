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
		m map[codec.UserID]*Session
	}
}

func newHub() *hub {
	h := &hub{}
	for i := range h.shards {
		h.shards[i].m = map[codec.UserID]*Session{}
	}
	return h
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
// sends need no store read to check the recipient exists. Bounded: a full
// shard is emptied.
type nameCache struct {
	shards [hubShards]struct {
		sync.RWMutex
		m map[codec.UserID]string
	}
	perShard int
}

func newNameCache(perShard int) *nameCache {
	c := &nameCache{perShard: perShard}
	for i := range c.shards {
		c.shards[i].m = map[codec.UserID]string{}
	}
	return c
}

func (c *nameCache) get(uid codec.UserID) (string, bool) {
	sh := &c.shards[uint64(uid)%hubShards]
	sh.RLock()
	name, ok := sh.m[uid]
	sh.RUnlock()
	return name, ok
}

func (c *nameCache) put(uid codec.UserID, name string) {
	sh := &c.shards[uint64(uid)%hubShards]
	sh.Lock()
	if len(sh.m) >= c.perShard {
		clear(sh.m)
	}
	sh.m[uid] = name
	sh.Unlock()
}

// memberCache remembers the member ids of groups so that a group send needs
// no member list read. Members never leave a group, so a cached list is
// current exactly while the group's member count (one cheap read per send)
// is unchanged; a join on any node is seen by the next send. Bounded: a
// full shard is emptied. Safe for concurrent use.
type memberCache struct {
	shards [hubShards]struct {
		sync.RWMutex
		m map[codec.GroupID][]codec.UserID
	}
	perShard int
}

func newMemberCache(perShard int) *memberCache {
	c := &memberCache{perShard: perShard}
	for i := range c.shards {
		c.shards[i].m = map[codec.GroupID][]codec.UserID{}
	}
	return c
}

// get returns the cached member ids of gid; the slice must not be changed.
func (c *memberCache) get(gid codec.GroupID) []codec.UserID {
	sh := &c.shards[uint64(gid)%hubShards]
	sh.RLock()
	ids := sh.m[gid]
	sh.RUnlock()
	return ids
}

func (c *memberCache) put(gid codec.GroupID, ids []codec.UserID) {
	sh := &c.shards[uint64(gid)%hubShards]
	sh.Lock()
	if len(sh.m) >= c.perShard {
		clear(sh.m)
	}
	sh.m[gid] = ids
	sh.Unlock()
}
