package pubsub

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatcluster/chatcluster/codec"
)

// RedisConfig configures NewRedis. Zero values mean the documented defaults.
type RedisConfig struct {
	// Addr is Redis's host:port. Required.
	Addr string
	// Password and DB select the Redis database.
	Password string
	DB       int
	// NodeID names this node; it must be unique in the cluster. Required.
	NodeID string
	// Prefix starts every key and channel: default "chat:".
	Prefix string
	// Lease is how long a node's presence survives without renewal, so a
	// crashed node's users read offline within it: default 15 s. The node
	// renews it every Lease/3.
	Lease time.Duration
	// ProbeInterval is how often the node publishes a probe to its own
	// channel; a subscription that sees no probe for 3 intervals is
	// re-created (and the node resyncs): default 2 s.
	ProbeInterval time.Duration
	// KickTimeout bounds the wait for another node to confirm a kick:
	// default 2 s.
	KickTimeout time.Duration
	// Timeout bounds every Redis command: default 1 s, so that a Redis
	// outage surfaces as errno 10 promptly.
	Timeout time.Duration
	// QueueLen bounds the batches of notices waiting to be published:
	// default 4096. Beyond it notices are dropped and a resync follows.
	QueueLen int
	// Logger: default slog.Default(). The bus adds "node" (NodeID) to its lines.
	Logger *slog.Logger
}

// Redis is the cluster Bus: per-node channels on Redis pub/sub, presence in
// Redis keys with a per-node lease. Safe for concurrent use.
//
// Keys and channels (P is the prefix):
//
//	P+"presence:"+uid  string "SESSION@NODE@BOOT": uid's current session
//	P+"lease:"+NODE    string "MILLIS@BOOT", expires after Lease unless renewed:
//	                   NODE is alive, in its run BOOT, renewed at MILLIS
//	P+"node:"+NODE     channel: envelopes for NODE
//	P+"all"            channel: envelopes for every node
//
// BOOT is random for each run of a node (each NewRedis): a node restarted
// under the same id does not bring back the presence its previous run
// left behind when it crashed.
type Redis struct {
	cfg RedisConfig
	rdb *redis.Client
	log *slog.Logger

	handler atomic.Pointer[handlerBox]
	queue   chan []Notice
	lost    atomic.Bool // notices were dropped: broadcast a resync when Redis is back

	waitMu  sync.Mutex
	waiters map[string]chan struct{} // kick id -> confirmation

	localMu sync.Mutex
	local   map[codec.UserID]string // sessions on this node, to re-assert presence

	offMu    sync.Mutex
	offline  map[offlineKey]struct{} // failed SetOfflines, retried in the background
	retrying atomic.Bool             // a retryOffline runs

	boot string // this run of the node

	suspectMu sync.Mutex
	suspect   map[string]time.Time     // node -> until when kicks to it are not awaited
	gone      map[string]chan struct{} // node -> closed when it turns suspect, ending the waits for it

	psMu sync.Mutex
	ps   *redis.PubSub // the current subscription, closed by Close to end a blocked read

	lastProbe atomic.Int64
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

type handlerBox struct{ h Handler }

var _ Bus = (*Redis)(nil)

// envelope is the payload of every message on the bus, JSON encoded:
//
//	{"t":"n","n":[{"to":UID,"d":[DELIVERY...],"g":[I...]}...],"gd":[DELIVERY...]}  notices
//	{"t":"k","u":UID,"s":SESSION,"id":KICKID,"f":NODE}  kick a session
//	{"t":"ka","id":KICKID}                             kick done
//	{"t":"p"}                                          probe
//	{"t":"r"}                                          resync every session
//
// A notice's group deliveries are indexes into "gd", where each group
// message (group id and gseq) is once however many of the node's users
// it goes to; "d" holds the rest.
type envelope struct {
	T       string           `json:"t"`
	Notices []wireNotice     `json:"n,omitempty"`
	Group   []codec.Delivery `json:"gd,omitempty"`
	UID     codec.UserID     `json:"u,omitempty"`
	Session string           `json:"s,omitempty"`
	ID      string           `json:"id,omitempty"`
	From    string           `json:"f,omitempty"`
}

// LogRedisTo sends go-redis's own log lines (its connection pool's dial
// failures, for one) to log at Warn, instead of to stderr past the
// process's log format. go-redis has one logger per process: the last
// call wins.
func LogRedisTo(log *slog.Logger) { redis.SetLogger(redisLog{log}) }

// redisLog is go-redis's logger on a slog.Logger: one message, so that
// the log's throttle counts them together, with go-redis's text as
// "detail" (it holds addresses and connection numbers).
type redisLog struct{ log *slog.Logger }

func (r redisLog) Printf(ctx context.Context, format string, v ...any) {
	r.log.WarnContext(ctx, "go-redis", "detail", strings.TrimSpace(fmt.Sprintf(format, v...)))
}

// NewRedis connects to Redis and starts the node's lease, probe, publisher
// and subscriber goroutines once Subscribe is called.
func NewRedis(ctx context.Context, cfg RedisConfig) (*Redis, error) {
	if cfg.Addr == "" || cfg.NodeID == "" {
		return nil, errors.New("pubsub: Redis Addr and NodeID are required")
	}
	if strings.ContainsAny(cfg.NodeID, "@ \t\r\n") {
		return nil, fmt.Errorf("pubsub: node id %q must not contain '@' or spaces", cfg.NodeID)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "chat:"
	}
	if cfg.Lease <= 0 {
		cfg.Lease = 15 * time.Second
	}
	if cfg.ProbeInterval <= 0 {
		cfg.ProbeInterval = 2 * time.Second
	}
	if cfg.KickTimeout <= 0 {
		cfg.KickTimeout = 2 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = time.Second
	}
	if cfg.QueueLen <= 0 {
		cfg.QueueLen = 4096
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	rdb := redis.NewClient(&redis.Options{
		Addr: cfg.Addr, Password: cfg.Password, DB: cfg.DB,
		DialTimeout: cfg.Timeout, ReadTimeout: cfg.Timeout, WriteTimeout: cfg.Timeout,
		PoolTimeout: cfg.Timeout, MaxRetries: 1,
		ConnMaxLifetime: 5 * time.Minute, ConnMaxIdleTime: time.Minute,
		ContextTimeoutEnabled: true,
		ClientName:            cfg.Prefix + cfg.NodeID,
	})
	r := &Redis{
		cfg: cfg, rdb: rdb, log: cfg.Logger.With("node", cfg.NodeID),
		queue:   make(chan []Notice, cfg.QueueLen),
		waiters: map[string]chan struct{}{},
		local:   map[codec.UserID]string{},
		offline: map[offlineKey]struct{}{},
		suspect: map[string]time.Time{},
		gone:    map[string]chan struct{}{},
	}
	var boot [8]byte
	_, _ = rand.Read(boot[:])
	r.boot = hex.EncodeToString(boot[:])
	r.ctx, r.cancel = context.WithCancel(context.Background())
	pctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("pubsub: redis %s: %w", cfg.Addr, err)
	}
	if err := checkVersion(pctx, rdb); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("pubsub: redis %s: %w", cfg.Addr, err)
	}
	if err := r.renewLease(ctx); err != nil {
		rdb.Close()
		return nil, err
	}
	return r, nil
}

// ErrRedisVersion: the Redis server is older than 6.2, the first to take
// SET ... GET (used to take over presence at login).
var ErrRedisVersion = errors.New("pubsub: Redis 6.2 or later is required")

// checkVersion refuses a Redis server older than 6.2.
func checkVersion(ctx context.Context, rdb *redis.Client) error {
	info, err := rdb.Info(ctx, "server").Result()
	if err != nil {
		return err
	}
	return versionOK(info)
}

// versionOK checks the redis_version line of INFO server.
func versionOK(info string) error {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			parts := strings.SplitN(v, ".", 3)
			major, err1 := strconv.Atoi(parts[0])
			minor := 0
			if len(parts) > 1 {
				minor, _ = strconv.Atoi(parts[1])
			}
			if err1 != nil || major < 6 || (major == 6 && minor < 2) {
				return fmt.Errorf("%w (server has %s)", ErrRedisVersion, v)
			}
			return nil
		}
	}
	return fmt.Errorf("%w (server did not report its version)", ErrRedisVersion)
}

func (r *Redis) presenceKey(uid codec.UserID) string {
	return r.cfg.Prefix + "presence:" + strconv.FormatInt(int64(uid), 10)
}
func (r *Redis) leaseKey(node string) string { return r.cfg.Prefix + "lease:" + node }
func (r *Redis) channel(node string) string  { return r.cfg.Prefix + "node:" + node }
func (r *Redis) allChannel() string          { return r.cfg.Prefix + "all" }

// presenceValue is the presence of session on this run of this node.
func (r *Redis) presenceValue(session string) string {
	return session + "@" + r.cfg.NodeID + "@" + r.boot
}

// parsePresence splits a presence value. A value without BOOT (written
// by an older version) has boot "", as has a lease without one.
func parsePresence(v string) (session, node, boot string) {
	session, rest, _ := strings.Cut(v, "@")
	node, boot, _ = strings.Cut(rest, "@")
	return session, node, boot
}

// parseLease splits a lease value into when it was renewed (Unix ms) and
// the run of the node that renewed it.
func parseLease(v string) (renewed int64, boot string, err error) {
	ms, boot, _ := strings.Cut(v, "@")
	renewed, err = strconv.ParseInt(ms, 10, 64)
	return renewed, boot, err
}

func (r *Redis) cmdCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, r.cfg.Timeout)
}

// Subscribe implements Bus and starts the background goroutines.
func (r *Redis) Subscribe(h Handler) error {
	if !r.handler.CompareAndSwap(nil, &handlerBox{h}) {
		return errors.New("pubsub: Subscribe called twice")
	}
	r.wg.Add(3)
	go r.subscribeLoop()
	go r.publishLoop()
	go r.leaseLoop()
	return nil
}

func (r *Redis) h() Handler {
	if b := r.handler.Load(); b != nil {
		return b.h
	}
	return nil
}

// Publish implements Bus: local recipients at once, the rest queued for the
// publisher goroutine. It never blocks on Redis; when the queue is full the
// notices are dropped and a resync is broadcast once Redis works again.
func (r *Redis) Publish(_ context.Context, notices []Notice) error {
	h := r.h()
	if h == nil || len(notices) == 0 {
		return nil
	}
	rest := h.Deliver(notices)
	if len(rest) == 0 {
		return nil
	}
	select {
	case r.queue <- rest:
		return nil
	default:
		r.lost.Store(true)
		return errors.New("pubsub: publish queue full; notices dropped, will resync")
	}
}

// maxPublishBatch bounds the notices of one publish round.
const maxPublishBatch = 10000

// publishLoop sends queued notices: one presence lookup for the batch and
// one PUBLISH per destination node.
func (r *Redis) publishLoop() {
	defer r.wg.Done()
	for {
		var batch []Notice
		select {
		case <-r.ctx.Done():
			return
		case batch = <-r.queue:
		}
	drain:
		for len(batch) < maxPublishBatch {
			select {
			case more := <-r.queue:
				batch = append(batch, more...)
			default:
				break drain
			}
		}
		if err := r.publish(batch); err != nil {
			r.lost.Store(true)
			r.log.Warn("publish failed; recipients resync when Redis is back", "notices", len(batch), "err", err)
		}
	}
}

func (r *Redis) publish(batch []Notice) error {
	byNode := map[string][]Notice{}
	for start := 0; start < len(batch); start += 1000 {
		part := batch[start:min(start+1000, len(batch))]
		keys := make([]string, len(part))
		for i, n := range part {
			keys[i] = r.presenceKey(n.To)
		}
		ctx, cancel := r.cmdCtx(r.ctx)
		vals, err := r.rdb.MGet(ctx, keys...).Result()
		cancel()
		if err != nil {
			return err
		}
		for i, v := range vals {
			s, ok := v.(string)
			if !ok {
				continue // offline: the entry waits in the inbox
			}
			_, node, _ := parsePresence(s)
			byNode[node] = append(byNode[node], part[i])
		}
	}
	if len(byNode) == 0 {
		return nil
	}
	ctx, cancel := r.cmdCtx(r.ctx)
	defer cancel()
	pipe := r.rdb.Pipeline()
	for node, ns := range byNode {
		if err := queuePublish(ctx, pipe, r.channel(node), ns); err != nil {
			return err
		}
	}
	_, err := pipe.Exec(ctx)
	return err
}

// maxPublishBytes bounds one PUBLISH of notices (unless a single notice is
// larger). Redis disconnects a subscriber whose output buffer passes
// client-output-buffer-limit (by default 32 MB at once), and a group
// message to thousands of members on one node would otherwise go in one.
const maxPublishBytes = 1 << 20

// wireNotice is a Notice as the bus carries it (see envelope).
type wireNotice struct {
	To         codec.UserID     `json:"to"`
	Deliveries []codec.Delivery `json:"d,omitempty"`
	Group      []int            `json:"g,omitempty"`
}

// noticesEnvelope is the envelope of ns: each group message once.
func noticesEnvelope(ns []Notice) envelope {
	type groupMsg struct {
		gid  codec.GroupID
		gseq codec.Seq
	}
	var index map[groupMsg]int
	e := envelope{T: "n", Notices: make([]wireNotice, len(ns))}
	for i, n := range ns {
		w := &e.Notices[i]
		w.To = n.To
		for _, d := range n.Deliveries {
			if d.GroupID == 0 || d.GSeq == 0 {
				w.Deliveries = append(w.Deliveries, d)
				continue
			}
			if index == nil {
				index = map[groupMsg]int{}
			}
			k := groupMsg{d.GroupID, d.GSeq}
			j, ok := index[k]
			if !ok {
				j = len(e.Group)
				index[k] = j
				e.Group = append(e.Group, d)
			}
			w.Group = append(w.Group, j)
		}
	}
	return e
}

// notices rebuilds the notices of an envelope from noticesEnvelope. Each
// group message is encoded once (codec.Delivery.Encode), so that its
// recipients here are sent the same bytes. Indexes out of range are
// dropped (the recipient resyncs at its next gap).
func (e *envelope) notices() []Notice {
	for i := range e.Group {
		e.Group[i].Encode()
	}
	out := make([]Notice, len(e.Notices))
	for i, w := range e.Notices {
		ds := w.Deliveries
		for _, j := range w.Group {
			if j >= 0 && j < len(e.Group) {
				ds = append(ds, e.Group[j])
			}
		}
		out[i] = Notice{To: w.To, Deliveries: ds}
	}
	return out
}

// queuePublish adds to pipe the PUBLISHes of ns on channel: one, or, when
// its payload would pass maxPublishBytes, the halves' in order.
func queuePublish(ctx context.Context, pipe redis.Pipeliner, channel string, ns []Notice) error {
	payload, err := json.Marshal(noticesEnvelope(ns))
	if err != nil {
		return err
	}
	if len(payload) > maxPublishBytes && len(ns) > 1 {
		half := len(ns) / 2
		if err := queuePublish(ctx, pipe, channel, ns[:half]); err != nil {
			return err
		}
		return queuePublish(ctx, pipe, channel, ns[half:])
	}
	pipe.Publish(ctx, channel, payload)
	return nil
}

// leaseLoop renews the node lease, publishes probes, watches the
// subscription and broadcasts a resync after lost notices.
func (r *Redis) leaseLoop() {
	defer r.wg.Done()
	// Tick often enough to renew every Lease/3 (so a live lease is never
	// older than about Lease/3) and to probe every ProbeInterval.
	tick := time.NewTicker(min(r.cfg.ProbeInterval, r.cfg.Lease/6))
	defer tick.Stop()
	lastRenew, lastProbe := time.Now(), time.Time{}
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-tick.C:
		}
		if time.Since(lastRenew) >= r.cfg.Lease/3 {
			if err := r.renewLease(r.ctx); err != nil {
				r.log.Warn("lease renewal failed", "err", err)
			} else {
				lastRenew = time.Now()
			}
		}
		if r.pendingOffline() && r.retrying.CompareAndSwap(false, true) {
			// Off this goroutine: many of them must not hold up the
			// lease's renewal and the probes.
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				defer r.retrying.Store(false)
				r.retryOffline()
			}()
		}
		if time.Since(lastProbe) < r.cfg.ProbeInterval {
			continue
		}
		lastProbe = time.Now()
		if _, err := r.send(r.ctx, r.channel(r.cfg.NodeID), envelope{T: "p"}); err != nil {
			continue
		}
		if r.lost.Load() {
			if _, err := r.send(r.ctx, r.allChannel(), envelope{T: "r"}); err == nil {
				r.lost.Store(false)
				r.log.Info("broadcast resync after lost notices")
			}
		}
	}
}

func (r *Redis) renewLease(ctx context.Context) error {
	ctx, cancel := r.cmdCtx(ctx)
	defer cancel()
	v := strconv.FormatInt(time.Now().UnixMilli(), 10) + "@" + r.boot // when it was last renewed, by whom
	if err := r.rdb.Set(ctx, r.leaseKey(r.cfg.NodeID), v, r.cfg.Lease).Err(); err != nil {
		return fmt.Errorf("pubsub: lease: %w", err)
	}
	return nil
}

// send publishes e on channel and returns how many subscribers got it.
func (r *Redis) send(ctx context.Context, channel string, e envelope) (receivers int64, err error) {
	payload, err := json.Marshal(e)
	if err != nil {
		return 0, err
	}
	ctx, cancel := r.cmdCtx(ctx)
	defer cancel()
	return r.rdb.Publish(ctx, channel, payload).Result()
}

// subscribeLoop is the node's single subscriber. Each (re)subscription is
// followed by a resync of every local session, because whatever was
// published meanwhile is lost.
func (r *Redis) subscribeLoop() {
	defer r.wg.Done()
	backoff := 100 * time.Millisecond
	for r.ctx.Err() == nil {
		err := r.subscribeOnce()
		if r.ctx.Err() != nil {
			return
		}
		r.log.Warn("subscription lost; re-subscribing", "err", err, "in", backoff)
		select {
		case <-r.ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

func (r *Redis) subscribeOnce() error {
	ps := r.rdb.Subscribe(r.ctx, r.channel(r.cfg.NodeID), r.allChannel())
	r.psMu.Lock()
	r.ps = ps
	closing := r.ctx.Err() != nil
	r.psMu.Unlock()
	defer ps.Close()
	if closing {
		return r.ctx.Err()
	}
	// Wait for both subscriptions to be confirmed.
	for confirmed := 0; confirmed < 2; {
		msg, err := ps.ReceiveTimeout(r.ctx, r.cfg.Timeout)
		if err != nil {
			return err
		}
		if _, ok := msg.(*redis.Subscription); ok {
			confirmed++
		}
	}
	r.log.Info("subscribed", "channel", r.channel(r.cfg.NodeID))
	r.lastProbe.Store(time.Now().UnixNano())
	// Redis may have restarted empty: put back the presence of every local
	// session, then resync, so that nothing committed meanwhile is missed.
	if err := r.reassertPresence(); err != nil {
		return err
	}
	if h := r.h(); h != nil {
		h.Resync()
	}
	silence := 3 * r.cfg.ProbeInterval
	for {
		msg, err := ps.ReceiveTimeout(r.ctx, silence)
		if err != nil {
			return err
		}
		switch m := msg.(type) {
		case *redis.Message:
			r.dispatch(m.Payload)
		case *redis.Pong:
		}
		if time.Since(time.Unix(0, r.lastProbe.Load())) > silence {
			return errors.New("no probe received: subscription is broken")
		}
	}
}

func (r *Redis) dispatch(payload string) {
	var e envelope
	if err := json.Unmarshal([]byte(payload), &e); err != nil {
		r.log.Warn("bad bus message", "err", err)
		return
	}
	h := r.h()
	switch e.T {
	case "p":
		r.lastProbe.Store(time.Now().UnixNano())
	case "n":
		if h != nil {
			// Recipients that moved away meanwhile are dropped: their new
			// node reads the inbox at login.
			h.Deliver(e.notices())
		}
	case "k":
		r.localMu.Lock()
		if r.local[e.UID] == e.Session {
			delete(r.local, e.UID)
		}
		r.localMu.Unlock()
		if h != nil {
			h.Kick(e.UID, e.Session)
		}
		if e.From != "" {
			if _, err := r.send(r.ctx, r.channel(e.From), envelope{T: "ka", ID: e.ID}); err != nil {
				r.log.Warn("kick confirmation failed", "err", err)
			}
		}
	case "ka":
		r.waitMu.Lock()
		if ch, ok := r.waiters[e.ID]; ok {
			close(ch)
			delete(r.waiters, e.ID)
		}
		r.waitMu.Unlock()
	case "r":
		if h != nil {
			h.Resync()
		}
	}
}

// reassertPresence writes the presence of every local session that Redis no
// longer has (SETNX: a newer login elsewhere wins). A local session whose
// user logged in elsewhere meanwhile is kicked here: the kick sent to this
// node then was lost with the subscription.
func (r *Redis) reassertPresence() error {
	r.localMu.Lock()
	local := make(map[codec.UserID]string, len(r.local))
	for uid, s := range r.local {
		local[uid] = s
	}
	r.localMu.Unlock()
	if err := r.renewLease(r.ctx); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.ctx, 10*r.cfg.Timeout)
	defer cancel()
	type reassert struct {
		uid     codec.UserID
		session string
		cur     *redis.StringCmd
	}
	batch := make([]reassert, 0, 1000)
	flush := func() error {
		// SETNX then GET in one MULTI: GET sees either this session (set
		// now or still there) or the newer login that superseded it.
		pipe := r.rdb.TxPipeline()
		for i, a := range batch {
			key := r.presenceKey(a.uid)
			pipe.SetNX(ctx, key, r.presenceValue(a.session), 0)
			batch[i].cur = pipe.Get(ctx, key)
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		for _, a := range batch {
			cur, err := a.cur.Result()
			if errors.Is(err, redis.Nil) || cur == r.presenceValue(a.session) {
				continue // re-asserted, or still there
			}
			if err != nil {
				return err
			}
			r.localMu.Lock()
			if r.local[a.uid] == a.session {
				delete(r.local, a.uid)
			}
			r.localMu.Unlock()
			if h := r.h(); h != nil {
				h.Kick(a.uid, a.session)
			}
		}
		batch = batch[:0]
		return nil
	}
	for uid, s := range local {
		batch = append(batch, reassert{uid: uid, session: s})
		if len(batch) == cap(batch) {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// SetOnline implements Bus. The previous session of uid, if it lives on
// another node, is kicked; when that node is live (its lease fresh, and no
// kick to it went unconfirmed lately), SetOnline returns once it confirms
// (or KickTimeout passes). A kick that no subscriber received (the old
// node died, or lost Redis and will drop the session when it re-asserts
// presence) is not waited for, and a wait under way ends as soon as
// another login finds no subscriber for that node: a node killed a moment
// ago can still count as one for the first kicks to it. A re-login costs
// one Redis round trip, or two when it kicks.
func (r *Redis) SetOnline(ctx context.Context, uid codec.UserID, session string) error {
	// Local first: a kick of this session (from a login elsewhere that
	// reads the presence written below) may arrive before SET returns, and
	// must find it to drop it.
	r.localMu.Lock()
	was, had := r.local[uid]
	r.local[uid] = session
	r.localMu.Unlock()
	cctx, cancel := r.cmdCtx(ctx)
	prev, err := r.rdb.SetArgs(cctx, r.presenceKey(uid), r.presenceValue(session), redis.SetArgs{Get: true}).Result()
	cancel()
	if err != nil && !errors.Is(err, redis.Nil) {
		// The login fails, and the node keeps the session it had, if any.
		r.localMu.Lock()
		if r.local[uid] == session {
			if had {
				r.local[uid] = was
			} else {
				delete(r.local, uid)
			}
		}
		r.localMu.Unlock()
	}
	if errors.Is(err, redis.Nil) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pubsub: presence: %w", err)
	}
	prevSession, node, prevBoot := parsePresence(prev)
	if node == r.cfg.NodeID || node == "" {
		return nil // a local session (the node's hub already replaced it), or one of an earlier run
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	payload, err := json.Marshal(envelope{T: "k", UID: uid, Session: prevSession, ID: id, From: r.cfg.NodeID})
	if err != nil {
		return err
	}
	done := make(chan struct{})
	r.waitMu.Lock()
	r.waiters[id] = done
	r.waitMu.Unlock()
	defer func() {
		r.waitMu.Lock()
		delete(r.waiters, id)
		r.waitMu.Unlock()
	}()
	// The kick and the old node's lease in one round trip (a storm of
	// re-logins after a node died makes one each).
	cctx, cancel = r.cmdCtx(ctx)
	pipe := r.rdb.Pipeline()
	kick := pipe.Publish(cctx, r.channel(node), payload)
	lease := pipe.Get(cctx, r.leaseKey(node))
	_, _ = pipe.Exec(cctx) // each command's own error is read below
	cancel()
	receivers, err := kick.Result()
	if err != nil {
		return fmt.Errorf("pubsub: kick: %w", err)
	}
	if receivers == 0 {
		// Nobody subscribes to that node's channel: it died (its Redis
		// connection closed with it) or lost Redis. No confirmation can
		// come; a node that comes back drops superseded sessions when it
		// re-asserts their presence.
		r.markSuspect(node)
		return nil
	}
	lv, err := lease.Result()
	if errors.Is(err, redis.Nil) {
		return nil // its lease ran out: it is dead or about to drop the session
	}
	var renewed int64
	var leaseBoot string
	if err == nil {
		renewed, leaseBoot, err = parseLease(lv)
	}
	if err != nil {
		// The kick went out: the login stands, without waiting for it.
		r.log.Warn("lease unreadable; kick not waited for", "peer", node, "err", err)
		return nil
	}
	if leaseBoot != prevBoot {
		return nil // the session's run of that node is gone: the node restarted since
	}
	// A node that missed a renewal, or that let a kick go unconfirmed
	// lately, is probably dead: it got the kick, but is not waited for.
	if time.Since(time.UnixMilli(renewed)) >= r.cfg.Lease/2 {
		return nil
	}
	gone := r.awaitable(node)
	if gone == nil {
		return nil
	}
	timer := time.NewTimer(r.cfg.KickTimeout)
	defer timer.Stop()
	select {
	case <-done:
	case <-gone:
		// Another login found the node gone (a node killed a moment ago
		// can still count as a subscriber for the first kicks to it).
	case <-timer.C:
		r.log.Warn("kick not confirmed in time; not waiting for this node for a lease", "user", uid, "peer", node)
		r.markSuspect(node)
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

// awaitable returns a channel that is closed when node turns suspect, or
// nil when it is suspect already, so that kicks to it are not waited for.
func (r *Redis) awaitable(node string) <-chan struct{} {
	r.suspectMu.Lock()
	defer r.suspectMu.Unlock()
	if until, ok := r.suspect[node]; ok && time.Now().Before(until) {
		return nil
	}
	ch, ok := r.gone[node]
	if !ok {
		ch = make(chan struct{})
		r.gone[node] = ch
	}
	return ch
}

// markSuspect stops the waits for kicks to node, those under way and
// those of the next lease: it died, lost Redis or confirms nothing.
func (r *Redis) markSuspect(node string) {
	r.suspectMu.Lock()
	defer r.suspectMu.Unlock()
	r.suspect[node] = time.Now().Add(r.cfg.Lease)
	if ch, ok := r.gone[node]; ok {
		close(ch)
		delete(r.gone, node)
	}
}

// offlineScript deletes a presence key only if it still names the session.
var offlineScript = redis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`)

// SetOffline implements Bus.
func (r *Redis) SetOffline(ctx context.Context, uid codec.UserID, session string) error {
	r.localMu.Lock()
	if r.local[uid] == session {
		delete(r.local, uid)
	}
	r.localMu.Unlock()
	ctx, cancel := r.cmdCtx(ctx)
	defer cancel()
	err := offlineScript.Run(ctx, r.rdb, []string{r.presenceKey(uid)}, r.presenceValue(session)).Err()
	if err != nil {
		// Retried in the background until Redis answers: the key has no
		// TTL, and would name a session that is gone for as long as this
		// run of the node lives. (A session id names one login, so the
		// retry cannot delete a later login's presence.)
		r.offMu.Lock()
		if len(r.offline) < maxPendingOffline {
			r.offline[offlineKey{uid, session}] = struct{}{}
		}
		r.offMu.Unlock()
		return fmt.Errorf("pubsub: presence: %w (retried in the background)", err)
	}
	return nil
}

// offlineKey is a SetOffline to retry.
type offlineKey struct {
	uid     codec.UserID
	session string
}

// maxPendingOffline bounds the SetOfflines kept for a retry; beyond it
// (a long Redis outage with many logins ending) they are dropped, and the
// users they name read online until their next login or this node's
// next run.
const maxPendingOffline = 1 << 17

func (r *Redis) pendingOffline() bool {
	r.offMu.Lock()
	defer r.offMu.Unlock()
	return len(r.offline) > 0
}

// retryOffline runs the SetOfflines that failed again, 500 to a pipeline,
// until Redis answers them; what fails stays queued for the next round. A
// newer presence of the same user is never touched: the delete compares
// the value, and a session id names one login.
func (r *Redis) retryOffline() {
	r.offMu.Lock()
	pending := make([]offlineKey, 0, len(r.offline))
	for k := range r.offline {
		pending = append(pending, k)
	}
	r.offMu.Unlock()
	for len(pending) > 0 && r.ctx.Err() == nil {
		batch := pending[:min(500, len(pending))]
		pending = pending[len(batch):]
		ctx, cancel := r.cmdCtx(r.ctx)
		pipe := r.rdb.Pipeline()
		for _, k := range batch {
			offlineScript.Eval(ctx, pipe, []string{r.presenceKey(k.uid)}, r.presenceValue(k.session))
		}
		cmds, err := pipe.Exec(ctx)
		cancel()
		r.offMu.Lock()
		for i, c := range cmds {
			if i < len(batch) && c.Err() == nil {
				delete(r.offline, batch[i])
			}
		}
		r.offMu.Unlock()
		if err != nil {
			r.log.Warn("presence: set offline, retried", "pending", len(pending)+len(batch), "err", err)
			var reply redis.Error
			if !errors.As(err, &reply) {
				return // Redis unreachable: the next round tries again
			}
		}
	}
}

// Online implements Bus: a user is online when its presence names a node
// whose lease is alive, renewed by the same run of that node.
func (r *Redis) Online(ctx context.Context, uids []codec.UserID) (map[codec.UserID]bool, error) {
	out := make(map[codec.UserID]bool, len(uids))
	if len(uids) == 0 {
		return out, nil
	}
	keys := make([]string, len(uids))
	for i, uid := range uids {
		keys[i] = r.presenceKey(uid)
	}
	cctx, cancel := r.cmdCtx(ctx)
	vals, err := r.rdb.MGet(cctx, keys...).Result()
	cancel()
	if err != nil {
		return nil, fmt.Errorf("pubsub: presence: %w", err)
	}
	nodeOf := make(map[codec.UserID]string, len(uids))
	var nodes []string
	seen := map[string]bool{}
	for i, v := range vals {
		s, ok := v.(string)
		if !ok {
			continue
		}
		_, node, boot := parsePresence(s)
		nodeOf[uids[i]] = node + "@" + boot
		if !seen[node] {
			seen[node] = true
			nodes = append(nodes, r.leaseKey(node))
		}
	}
	alive := map[string]bool{}
	if len(nodes) > 0 {
		cctx, cancel := r.cmdCtx(ctx)
		leases, err := r.rdb.MGet(cctx, nodes...).Result()
		cancel()
		if err != nil {
			return nil, fmt.Errorf("pubsub: lease: %w", err)
		}
		for i, l := range leases {
			if v, ok := l.(string); ok {
				_, boot, _ := strings.Cut(v, "@")
				alive[strings.TrimPrefix(nodes[i], r.cfg.Prefix+"lease:")+"@"+boot] = true
			}
		}
	}
	for _, uid := range uids {
		out[uid] = alive[nodeOf[uid]]
	}
	return out, nil
}

// Close implements Bus: it stops the goroutines and drops the node's lease,
// so its users read offline at once.
func (r *Redis) Close() error {
	r.closeOnce.Do(func() {
		r.psMu.Lock()
		r.cancel()
		if r.ps != nil {
			r.ps.Close() // a blocked ReceiveTimeout returns at once
		}
		r.psMu.Unlock()
		r.wg.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.Timeout)
		defer cancel()
		r.rdb.Del(ctx, r.leaseKey(r.cfg.NodeID))
		r.rdb.Close()
	})
	return nil
}
