package pubsub

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatcluster/chatcluster/codec"
)

// redisAddr returns the test Redis, skipping when there is none unless
// CHAT_REQUIRE_SERVICES=1.
func redisAddr(t *testing.T) string {
	t.Helper()
	addr := os.Getenv("CHAT_TEST_REDIS_ADDR")
	if addr == "" {
		if os.Getenv("CHAT_REQUIRE_SERVICES") == "1" {
			t.Fatal("CHAT_REQUIRE_SERVICES=1 but CHAT_TEST_REDIS_ADDR is not set")
		}
		t.Skip("CHAT_TEST_REDIS_ADDR not set")
	}
	return addr
}

// fakeHandler is a node's hub in miniature: a set of local users.
type fakeHandler struct {
	mu      sync.Mutex
	local   map[codec.UserID]string
	got     chan Notice
	kicks   chan string
	resyncs atomic.Int32
}

func newFakeHandler() *fakeHandler {
	return &fakeHandler{local: map[codec.UserID]string{}, got: make(chan Notice, 100), kicks: make(chan string, 10)}
}

func (f *fakeHandler) Deliver(ns []Notice) (rest []Notice) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range ns {
		if _, ok := f.local[n.To]; ok {
			f.got <- n
		} else {
			rest = append(rest, n)
		}
	}
	return rest
}

func (f *fakeHandler) Kick(uid codec.UserID, session string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.local[uid] == session {
		delete(f.local, uid)
		f.kicks <- session
	}
}

func (f *fakeHandler) Resync() { f.resyncs.Add(1) }

func (f *fakeHandler) login(t *testing.T, b *Redis, uid codec.UserID, session string) {
	t.Helper()
	f.mu.Lock()
	f.local[uid] = session
	f.mu.Unlock()
	if err := b.SetOnline(context.Background(), uid, session); err != nil {
		t.Fatal(err)
	}
}

func newTestBus(t *testing.T, addr, prefix, node string, lease time.Duration) (*Redis, *fakeHandler) {
	t.Helper()
	b, err := NewRedis(context.Background(), RedisConfig{Addr: addr, NodeID: node, Prefix: prefix, Lease: lease, ProbeInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	h := newFakeHandler()
	if err := b.Subscribe(h); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	waitFor(t, func() bool { return h.resyncs.Load() > 0 }) // subscribed
	return b, h
}

func testPrefix() string {
	var b [4]byte
	rand.Read(b[:])
	return "t" + hex.EncodeToString(b[:]) + ":"
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRedisRoutesAcrossNodes(t *testing.T) {
	addr, prefix := redisAddr(t), testPrefix()
	a, ha := newTestBus(t, addr, prefix, "a", time.Second)
	b, hb := newTestBus(t, addr, prefix, "b", time.Second)
	ha.login(t, a, 1, "s1")
	hb.login(t, b, 2, "s2")
	d := codec.Delivery{MsgID: codec.MsgOneChat, ID: 2, Name: "two", ToID: 1, Msg: "hi", Seq: 7}
	// Node b publishes to user 1 (on a), user 2 (local on b) and user 3 (offline).
	if err := b.Publish(context.Background(), []Notice{{To: 1, Deliveries: []codec.Delivery{d}}, {To: 2}, {To: 3}}); err != nil {
		t.Fatal(err)
	}
	for _, h := range []*fakeHandler{hb, ha} {
		select {
		case n := <-h.got:
			if h == ha && (n.To != 1 || len(n.Deliveries) != 1 || n.Deliveries[0] != d) {
				t.Fatalf("a got %+v", n)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("notice not delivered")
		}
	}
	online, err := a.Online(context.Background(), []codec.UserID{1, 2, 3})
	if err != nil || !online[1] || !online[2] || online[3] {
		t.Fatalf("online %v %v", online, err)
	}
	// SetOffline of a stale session changes nothing; of the current one, it does.
	a.SetOffline(context.Background(), 1, "old-session")
	if online, _ := b.Online(context.Background(), []codec.UserID{1}); !online[1] {
		t.Fatal("stale SetOffline removed presence")
	}
	a.SetOffline(context.Background(), 1, "s1")
	if online, _ := b.Online(context.Background(), []codec.UserID{1}); online[1] {
		t.Fatal("still online after SetOffline")
	}
}

func TestRedisKickAcrossNodes(t *testing.T) {
	addr, prefix := redisAddr(t), testPrefix()
	a, ha := newTestBus(t, addr, prefix, "a", time.Second)
	b, hb := newTestBus(t, addr, prefix, "b", time.Second)
	ha.login(t, a, 5, "first")
	hb.login(t, b, 5, "second") // returns only after a confirmed the kick
	select {
	case s := <-ha.kicks:
		if s != "first" {
			t.Fatalf("kicked %q", s)
		}
	default:
		t.Fatal("SetOnline returned before the old session was kicked")
	}
}

func TestRedisDeadNodeReadsOffline(t *testing.T) {
	addr, prefix := redisAddr(t), testPrefix()
	a, _ := newTestBus(t, addr, prefix, "a", time.Second)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	// A presence left behind by a node that crashed: no lease.
	rdb.Set(context.Background(), prefix+"presence:9", "s@crashed", 0)
	if online, _ := a.Online(context.Background(), []codec.UserID{9}); online[9] {
		t.Fatal("user of a dead node reads online")
	}
	// A node whose lease runs out without renewal.
	rdb.Set(context.Background(), prefix+"lease:dying", "1", 200*time.Millisecond)
	rdb.Set(context.Background(), prefix+"presence:10", "s@dying", 0)
	if online, _ := a.Online(context.Background(), []codec.UserID{10}); !online[10] {
		t.Fatal("user of a live node reads offline")
	}
	waitFor(t, func() bool {
		online, _ := a.Online(context.Background(), []codec.UserID{10})
		return !online[10]
	})
	// A login where the old node is dead does not wait for a kick.
	start := time.Now()
	if err := a.SetOnline(context.Background(), 10, "new"); err != nil || time.Since(start) > time.Second {
		t.Fatalf("SetOnline over a dead node: %v after %v", err, time.Since(start))
	}
}

func TestRedisResyncAfterSubscriptionLoss(t *testing.T) {
	addr, prefix := redisAddr(t), testPrefix()
	_, h := newTestBus(t, addr, prefix, "a", time.Second)
	before := h.resyncs.Load()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	killSubscriber(t, rdb, prefix+"a")
	waitFor(t, func() bool { return h.resyncs.Load() > before })
}

// killSubscriber closes the Redis subscriber connection of one node (only
// it: other tests share Redis).
func killSubscriber(t *testing.T, rdb *redis.Client, name string) {
	t.Helper()
	list, err := rdb.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	killed := 0
	for _, line := range strings.Split(list, "\n") {
		if strings.Contains(line, " name="+name+" ") && strings.Contains(line, " flags=P ") {
			for _, f := range strings.Fields(line) {
				if a, ok := strings.CutPrefix(f, "addr="); ok {
					if err := rdb.ClientKillByFilter(context.Background(), "ADDR", a).Err(); err == nil {
						killed++
					}
				}
			}
		}
	}
	if killed != 1 {
		t.Fatalf("killed %d subscriber connections", killed)
	}
}

// A kick that no node receives (the old node's lease is fresh but nothing
// subscribes to its channel: it was just killed) is not waited for.
func TestRedisKickToUnsubscribedNode(t *testing.T) {
	addr, prefix := redisAddr(t), testPrefix()
	a, _ := newTestBus(t, addr, prefix, "a", 10*time.Second)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	ctx := context.Background()
	rdb.Set(ctx, prefix+"lease:killed", time.Now().UnixMilli(), 10*time.Second)
	rdb.Set(ctx, prefix+"presence:11", "s@killed", 0)
	start := time.Now()
	if err := a.SetOnline(ctx, 11, "new"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("SetOnline waited %v for a kick nobody received", d)
	}
	if v, _ := rdb.Get(ctx, prefix+"presence:11").Result(); v != "new@a" {
		t.Fatalf("presence %q", v)
	}
}

// A node still subscribed whose lease ran out (it failed to renew) gets
// the kick all the same, so the superseded session goes at once; it is not
// waited for.
func TestRedisKickToNodeWithoutLease(t *testing.T) {
	addr, prefix := redisAddr(t), testPrefix()
	a, _ := newTestBus(t, addr, prefix, "a", 30*time.Second)
	b, hb := newTestBus(t, addr, prefix, "b", 30*time.Second) // renews every 10 s
	hb.login(t, b, 12, "first")
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	ctx := context.Background()
	if err := rdb.Del(ctx, prefix+"lease:b").Err(); err != nil {
		t.Fatal(err)
	}
	if err := a.SetOnline(ctx, 12, "second"); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-hb.kicks:
		if s != "first" {
			t.Fatalf("kicked %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the node without a lease was not kicked")
	}
}

// A node that lost its subscription misses kicks: when it re-subscribes it
// drops the sessions whose users logged in elsewhere meanwhile, and keeps
// (re-asserting) the others.
func TestRedisReassertDropsSupersededSessions(t *testing.T) {
	addr, prefix := redisAddr(t), testPrefix()
	a, ha := newTestBus(t, addr, prefix, "a", 10*time.Second)
	ha.login(t, a, 7, "old7")
	ha.login(t, a, 8, "s8")
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	ctx := context.Background()
	// While a is cut off: user 7 logs in on b (its kick to a is lost), and
	// user 8's presence expires.
	rdb.Set(ctx, prefix+"presence:7", "new7@b", 0)
	rdb.Del(ctx, prefix+"presence:8")
	before := ha.resyncs.Load()
	killSubscriber(t, rdb, prefix+"a")
	waitFor(t, func() bool { return ha.resyncs.Load() > before })
	select {
	case s := <-ha.kicks:
		if s != "old7" {
			t.Fatalf("kicked %q", s)
		}
	default:
		t.Fatal("superseded session survived the re-subscription")
	}
	if v, _ := rdb.Get(ctx, prefix+"presence:7").Result(); v != "new7@b" {
		t.Fatalf("presence of 7 = %q, want the newer login", v)
	}
	if v, _ := rdb.Get(ctx, prefix+"presence:8").Result(); v != "s8@a" {
		t.Fatalf("presence of 8 = %q, want re-asserted", v)
	}
	select {
	case s := <-ha.kicks:
		t.Fatalf("also kicked %q", s)
	default:
	}
}

func TestRedisVersionCheck(t *testing.T) {
	for info, ok := range map[string]bool{
		"# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n": true,
		"redis_version:7.2.4\r\n":   true,
		"redis_version:10.0.0\r\n":  true,
		"redis_version:6.2.14\r\n":  true,
		"redis_version:6.0.16\r\n":  false,
		"redis_version:5.0.7\r\n":   false,
		"redis_mode:standalone\r\n": false,
	} {
		if err := versionOK(info); (err == nil) != ok {
			t.Errorf("%q: %v", info, err)
		}
	}
}
