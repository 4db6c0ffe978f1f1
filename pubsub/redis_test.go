package pubsub

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"slices"
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
	if v, _ := rdb.Get(ctx, prefix+"presence:11").Result(); v != a.presenceValue("new") {
		t.Fatalf("presence %q", v)
	}
}

// A kick to a node that Redis still counts as a subscriber (killed a
// moment ago) is waited for only until another login finds the node gone,
// not for the whole KickTimeout.
func TestRedisKickWaitEndsWhenPeerGone(t *testing.T) {
	addr, prefix := redisAddr(t), testPrefix()
	a, err := NewRedis(context.Background(), RedisConfig{Addr: addr, NodeID: "a", Prefix: prefix, KickTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.Subscribe(newFakeHandler()); err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	ctx := context.Background()
	// The peer: subscribed and leased, but it never confirms a kick.
	ps := rdb.Subscribe(ctx, prefix+"node:peer")
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	rdb.Set(ctx, prefix+"lease:peer", fmt.Sprintf("%d@B1", time.Now().UnixMilli()), time.Minute)
	rdb.Set(ctx, prefix+"presence:21", "s1@peer@B1", 0)
	rdb.Set(ctx, prefix+"presence:22", "s2@peer@B1", 0)

	first := make(chan error, 1)
	go func() { first <- a.SetOnline(ctx, 21, "new1") }()
	waitFor(t, func() bool { // the first login waits for the peer
		a.waitMu.Lock()
		defer a.waitMu.Unlock()
		return len(a.waiters) == 1
	})
	if err := ps.Close(); err != nil { // the peer dies
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		n, err := rdb.PubSubNumSub(ctx, prefix+"node:peer").Result()
		return err == nil && n[prefix+"node:peer"] == 0
	})
	if err := a.SetOnline(ctx, 22, "new2"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-first:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the first login still waits for a node found gone")
	}
	// Later logins do not wait for it either.
	rdb.Set(ctx, prefix+"presence:23", "s3@peer@B1", 0)
	if err := a.SetOnline(ctx, 23, "new3"); err != nil {
		t.Fatal(err)
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
	if v, _ := rdb.Get(ctx, prefix+"presence:8").Result(); v != a.presenceValue("s8") {
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

// A node that crashed and is restarted under the same id does not bring
// back the presence its previous run left behind: those users stay
// offline until they log in again.
func TestRedisRestartedNodeDoesNotReviveOldPresence(t *testing.T) {
	addr, prefix := redisAddr(t), testPrefix()
	lease := 600 * time.Millisecond
	obs, _ := newTestBus(t, addr, prefix, "obs", lease)
	old, hold := newTestBus(t, addr, prefix, "a", lease)
	hold.login(t, old, 42, "sess-old")
	ctx := context.Background()
	if on, _ := obs.Online(ctx, []codec.UserID{42}); !on[42] {
		t.Fatal("a user logged in on a live node reads offline")
	}
	// The crash: the run stops renewing its lease and never sets anyone
	// offline, nor drops its lease (as Close would).
	old.cancel()
	old.wg.Wait()
	restarted, hnew := newTestBus(t, addr, prefix, "a", lease) // within the old lease
	if on, _ := obs.Online(ctx, []codec.UserID{42}); on[42] {
		t.Fatal("user 42 of the crashed run reads online once the node restarted")
	}
	// The restarted run's own users read online, and a login elsewhere
	// takes over user 42 at once.
	hnew.login(t, restarted, 43, "sess-new")
	if on, _ := obs.Online(ctx, []codec.UserID{43}); !on[43] {
		t.Fatal("a user of the restarted run reads offline")
	}
	start := time.Now()
	if err := obs.SetOnline(ctx, 42, "sess-obs"); err != nil || time.Since(start) > time.Second {
		t.Fatalf("a login over the crashed run's session: %v after %v", err, time.Since(start))
	}
}

// breakPresence makes uid's presence key a list, so that Redis refuses the
// presence commands on it (WRONGTYPE) until it is set again; it returns
// the key.
func breakPresence(t *testing.T, rdb *redis.Client, b *Redis, uid codec.UserID) string {
	t.Helper()
	ctx := context.Background()
	key := b.presenceKey(uid)
	if err := rdb.Del(ctx, key).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.RPush(ctx, key, "x").Err(); err != nil {
		t.Fatal(err)
	}
	return key
}

// A SetOffline that fails is retried until Redis answers it: the presence
// key has no TTL, so a lost one would leave the user online for as long as
// the node lives. (The failure here is a key of the wrong type, not a
// paused Redis, which would stall the other packages' tests.)
func TestRedisSetOfflineRetried(t *testing.T) {
	addr, prefix := redisAddr(t), testPrefix()
	b, h := newTestBus(t, addr, prefix, "a", 3*time.Second)
	h.login(t, b, 7, "s7")
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	ctx := context.Background()
	key := breakPresence(t, rdb, b, 7)
	if err := b.SetOffline(ctx, 7, "s7"); err == nil {
		t.Fatal("SetOffline on a key of the wrong type succeeded")
	}
	// Redis answers again, the presence still naming the session.
	rdb.Del(ctx, key)
	if err := rdb.Set(ctx, key, b.presenceValue("s7"), 0).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		on, err := b.Online(ctx, []codec.UserID{7})
		return err == nil && !on[7]
	})
	waitFor(t, func() bool {
		b.offMu.Lock()
		defer b.offMu.Unlock()
		return len(b.offline) == 0
	})
}

// A group message to thousands of members on one node crosses the bus
// once, not once per member (10,000 times 4 KiB would pass Redis's
// client-output-buffer-limit for pubsub, 32 MB by default, and Redis would
// cut the subscriber off), and every member gets it.
func TestRedisLargeGroupFanout(t *testing.T) {
	addr, prefix := redisAddr(t), testPrefix()
	a, _ := newTestBus(t, addr, prefix, "a", 5*time.Second)
	// The members are on two other nodes, alternately: the fan-out goes
	// on past the first node it reaches.
	b, hb := newTestBus(t, addr, prefix, "b", 5*time.Second)
	c, hc := newTestBus(t, addr, prefix, "c", 5*time.Second)
	const members = 10000
	hb.got = make(chan Notice, members)
	hc.got = make(chan Notice, members)
	ctx := context.Background()
	pipe := b.rdb.Pipeline()
	for uid := codec.UserID(1); uid <= members; uid++ {
		bus, h := b, hb
		if uid%2 == 0 {
			bus, h = c, hc
		}
		h.local[uid] = "s"
		pipe.Set(ctx, bus.presenceKey(uid), bus.presenceValue("s"), 0)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	resyncs := hb.resyncs.Load() + hc.resyncs.Load()
	d := codec.Delivery{MsgID: codec.MsgGroupChat, ID: 1, Name: "x", GroupID: 1, Msg: strings.Repeat("y", 4096), GSeq: 1}
	ns := make([]Notice, members)
	for i := range ns {
		ns[i] = Notice{To: codec.UserID(i + 1), Deliveries: []codec.Delivery{d}}
	}
	a.queue <- ns // as Publish queues what is not local to a
	for _, h := range []*fakeHandler{hb, hc} {
		for i := range members / 2 {
			select {
			case <-h.got:
			case <-time.After(5 * time.Second):
				t.Fatalf("delivered over the bus to one node: %d of %d (resyncs %d -> %d)", i, members/2, resyncs, hb.resyncs.Load()+hc.resyncs.Load())
			}
		}
	}
	if got := hb.resyncs.Load() + hc.resyncs.Load(); got != resyncs {
		t.Fatalf("a subscriber was cut off: resyncs %d -> %d", resyncs, got)
	}
}

func TestParsePresenceAndLease(t *testing.T) {
	for _, c := range []struct{ v, session, node, boot string }{
		{"s1@chat1@b00t", "s1", "chat1", "b00t"},
		{"s1@chat1", "s1", "chat1", ""}, // written by an older version
		{"", "", "", ""},
	} {
		s, n, b := parsePresence(c.v)
		if s != c.session || n != c.node || b != c.boot {
			t.Errorf("parsePresence(%q) = %q, %q, %q", c.v, s, n, b)
		}
	}
	if ms, boot, err := parseLease("1700000000000@b00t"); err != nil || ms != 1700000000000 || boot != "b00t" {
		t.Errorf("parseLease: %d %q %v", ms, boot, err)
	}
	if ms, boot, err := parseLease("12"); err != nil || ms != 12 || boot != "" {
		t.Errorf("parseLease of a lease without boot: %d %q %v", ms, boot, err)
	}
	if _, _, err := parseLease("x@b"); err == nil {
		t.Error("parseLease of a bad lease: no error")
	}
}

// noticesEnvelope carries each group message once, and notices gives
// every recipient its deliveries back, per stream in order, the group
// messages encoded once for all.
func TestNoticesEnvelopeRoundTrip(t *testing.T) {
	g := func(gid codec.GroupID, gseq codec.Seq) codec.Delivery {
		return codec.Delivery{MsgID: codec.MsgGroupChat, ID: 9, Name: "n", GroupID: gid, Msg: "group", GSeq: gseq}
	}
	one := func(to codec.UserID, seq codec.Seq) codec.Delivery {
		return codec.Delivery{MsgID: codec.MsgOneChat, ID: 9, Name: "n", ToID: to, Msg: "private", Seq: seq}
	}
	ns := []Notice{
		{To: 1, Deliveries: []codec.Delivery{g(5, 1), one(1, 3), g(5, 2), g(6, 1)}},
		{To: 2, Deliveries: []codec.Delivery{g(5, 1), g(5, 2)}},
		{To: 3, Deliveries: []codec.Delivery{one(3, 1), one(3, 2)}},
		{To: 4},
	}
	payload, err := json.Marshal(noticesEnvelope(ns))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(payload), `"group"`); n != 3 {
		t.Fatalf("the payload carries group messages %d times, want 3: %s", n, payload)
	}
	var e envelope
	if err := json.Unmarshal(payload, &e); err != nil {
		t.Fatal(err)
	}
	got := e.notices()
	want := map[codec.UserID][]string{ // per recipient: each stream's deliveries in order
		1: {"g5:1", "g5:2", "g6:1", "s:3"},
		2: {"g5:1", "g5:2"},
		3: {"s:1", "s:2"},
		4: nil,
	}
	if len(got) != len(ns) {
		t.Fatalf("%d notices, want %d", len(got), len(ns))
	}
	for i, n := range got {
		if n.To != ns[i].To {
			t.Fatalf("notice %d to %d, want %d", i, n.To, ns[i].To)
		}
		var keys []string
		for _, d := range n.Deliveries {
			if d.GroupID != 0 {
				keys = append(keys, fmt.Sprintf("g%d:%d", d.GroupID, d.GSeq))
			} else {
				keys = append(keys, fmt.Sprintf("s:%d", d.Seq))
			}
		}
		slices.SortStableFunc(keys, func(a, b string) int { return strings.Compare(a[:2], b[:2]) })
		if !slices.Equal(keys, want[n.To]) {
			t.Errorf("user %d got %v, want %v", n.To, keys, want[n.To])
		}
	}
	// The same group message to users 1 and 2 is the same encoded frame.
	f1 := codec.AppendFrameOf(nil, &got[0].Deliveries[1])
	f2 := codec.AppendFrameOf(nil, &got[1].Deliveries[0])
	if len(f1) == 0 || &f1[0] != &f2[0] {
		t.Error("a group message's recipients do not share its frame")
	}
	// A bad index is dropped, not a panic.
	bad := envelope{T: "n", Notices: []wireNotice{{To: 1, Group: []int{0, 7, -1}}}, Group: []codec.Delivery{g(5, 1)}}
	if got := bad.notices(); len(got[0].Deliveries) != 1 {
		t.Errorf("with bad indexes: %v", got[0].Deliveries)
	}
}

// queuePublish splits notices whose payload would pass maxPublishBytes
// into PUBLISHes under it, in order.
func TestQueuePublishSplits(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	defer rdb.Close()
	body := strings.Repeat("x", 4096)
	ns := make([]Notice, 1000) // ~4.2 MB of private messages
	for i := range ns {
		ns[i] = Notice{To: codec.UserID(i + 1), Deliveries: []codec.Delivery{{MsgID: codec.MsgOneChat, ID: 1, ToID: codec.UserID(i + 1), Msg: body, Seq: 1}}}
	}
	pipe := rdb.Pipeline()
	if err := queuePublish(context.Background(), pipe, "ch", ns); err != nil {
		t.Fatal(err)
	}
	cmds, _ := pipe.Exec(context.Background()) // no Redis there: only the commands are read
	if len(cmds) < 4 {
		t.Fatalf("%d PUBLISHes for ~4.2 MB", len(cmds))
	}
	next := codec.UserID(1)
	for _, c := range cmds {
		args := c.Args()
		payload := args[len(args)-1].([]byte)
		if len(payload) > maxPublishBytes {
			t.Fatalf("a PUBLISH of %d bytes", len(payload))
		}
		var e envelope
		if err := json.Unmarshal(payload, &e); err != nil {
			t.Fatal(err)
		}
		for _, n := range e.notices() {
			if n.To != next {
				t.Fatalf("notice to %d, want %d", n.To, next)
			}
			next++
		}
	}
	if next != 1001 {
		t.Fatalf("%d notices published, want 1000", next-1)
	}
}

// A login whose presence write fails leaves the node's sessions as they
// were: the session it would have replaced is still re-asserted after a
// re-subscription.
func TestRedisFailedSetOnlineKeepsLocal(t *testing.T) {
	addr, prefix := redisAddr(t), testPrefix()
	b, h := newTestBus(t, addr, prefix, "a", 3*time.Second)
	h.login(t, b, 7, "first")
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	ctx := context.Background()
	breakPresence(t, rdb, b, 7)
	if err := b.SetOnline(ctx, 7, "second"); err == nil {
		t.Fatal("SetOnline over a key of the wrong type succeeded")
	}
	b.localMu.Lock()
	got := b.local[7]
	b.localMu.Unlock()
	if got != "first" {
		t.Fatalf("the node's session of user 7 is %q after a failed login, want %q", got, "first")
	}
}

// Queued SetOfflines are retried in pipelines of 500, off the lease's
// goroutine; one that Redis keeps refusing stays queued and does not hold
// up the others.
func TestRedisRetryOfflineBatches(t *testing.T) {
	addr, prefix := redisAddr(t), testPrefix()
	b, _ := newTestBus(t, addr, prefix, "a", 3*time.Second)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	ctx := context.Background()
	const n = 1200
	pipe := rdb.Pipeline()
	for uid := codec.UserID(1); uid <= n; uid++ {
		pipe.Set(ctx, b.presenceKey(uid), b.presenceValue("s"), 0)
	}
	pipe.RPush(ctx, b.presenceKey(n+1), "x") // refused: wrong type
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	b.offMu.Lock()
	for uid := codec.UserID(1); uid <= n+1; uid++ {
		b.offline[offlineKey{uid, "s"}] = struct{}{}
	}
	b.offMu.Unlock()
	waitFor(t, func() bool {
		b.offMu.Lock()
		defer b.offMu.Unlock()
		return len(b.offline) == 1
	})
	if _, still := b.offline[offlineKey{n + 1, "s"}]; !still {
		t.Fatal("the refused delete left the queue")
	}
	keys, err := rdb.Keys(ctx, prefix+"presence:*").Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("presence keys left: %d (%v)", len(keys), err)
	}
}
