// Package service is chatcluster's business layer: sign-up and login,
// one-to-one and group chat, friends and groups, and delivery of each user's
// durable inbox in seq order. It talks to connections through Transport, to
// persistence through Store and to other nodes through pubsub.Bus, so it
// never imports gnet, sqlx or go-redis.
package service

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/crypto/bcrypt"

	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/pubsub"
)

// Config configures a Node. Store and Bus are required; every other zero
// value means the documented default.
type Config struct {
	Store Store
	Bus   pubsub.Bus
	// Logger: default slog.Default().
	Logger *slog.Logger
	// BcryptCost for new passwords: default 10.
	BcryptCost int
	// TokenTTL is how long a session token stays valid: default 7 days.
	TokenTTL time.Duration
	// OfflineCap bounds LOGIN_ACK.offlineMsg: default 500.
	OfflineCap int
	// MaxMessageLen bounds "msg" in bytes: default 4096.
	MaxMessageLen int
	// AckFlushInterval is how often DELIVERED acks are written: default 1 s.
	// Acks only bound what is re-sent after a reconnect (clients drop
	// duplicates by seq), so they are batched generously: each flush costs
	// one row update per acknowledging user in the next group commit.
	AckFlushInterval time.Duration
	// RequestTimeout bounds the store calls of one request: default 5 s.
	RequestTimeout time.Duration
	// Now is the clock: default time.Now.
	Now func() time.Time
	// NodeName is reported to clients in LOGIN_ACK as "node" (the node's
	// -node-id); empty: not reported.
	NodeName string
	// MaxFrame is reported to clients in LOGIN_ACK as "maxframe": the
	// largest request frame body the server accepts. 0: not reported.
	MaxFrame int
	// PumpWindow bounds what waits unsent to one client: with that much
	// unsent, live deliveries are not written but left to the session's
	// pump, which reads and writes more of its streams (a backlog after a
	// login, a join or a resync, or what the client fell behind on) only
	// once less waits: default 1 MiB. Keep it well below the server's
	// max-outbound, past which a connection is closed as a slow consumer.
	PumpWindow int

	// LoginGroupUsers is the largest group whose members LOGIN_ACK lists:
	// default 1000. LoginUsers bounds the members listed in one LOGIN_ACK,
	// all groups together: default 10000. Groups not listed carry their
	// size only; GROUP_USERS pages through their members.
	LoginGroupUsers, LoginUsers int
	// MaxLoginAck is the largest LOGIN_ACK frame sent: default 4 MiB (the
	// server's max-outbound / 2). A bigger one goes without member lists,
	// then without offline messages (they follow it), and if it is still
	// too big the login fails with errno 11.
	MaxLoginAck int
	// MaxFriends, MaxGroups and MaxGroupMembers cap a user's friends
	// (default 5000), the groups a user belongs to (default 1000) and a
	// group's members (default 100000): past them ADD_FRIEND, CREATE_GROUP
	// and ADD_GROUP get errno 11.
	MaxFriends, MaxGroups, MaxGroupMembers int
	// MaxSending bounds what one session's chat sends waiting for their
	// commit hold, all together, counted as each message's text and
	// SendRecipientCost bytes for each recipient: default 1 MiB (the
	// server passes its max-pending-bytes). A send past it waits until the
	// session's earlier sends are stored, and the session's later requests
	// wait as pending meanwhile; a send with none waiting goes whatever
	// its size.
	MaxSending int
	// PasswordWorkers bounds the bcrypt hashes and comparisons (SIGNUP,
	// password LOGIN) that run at once: default half of GOMAXPROCS, at
	// least 1. A request that waits for one longer than its deadline gets
	// errno 10.
	PasswordWorkers int
}

// The defaults of Config's limits.
const (
	DefaultLoginGroupUsers = 1000
	DefaultLoginUsers      = 10000
	DefaultMaxLoginAck     = 4 << 20
	DefaultMaxFriends      = 5000
	DefaultMaxGroups       = 1000
	DefaultMaxGroupMembers = 100000
	DefaultMaxSending      = 1 << 20
)

// SendRecipientCost is what a chat send is counted to hold for each
// recipient until its commit (MaxSending): its place in the recipient
// list, and the commit's row and delivery entry for it.
const SendRecipientCost = 128

// Limits on names and passwords.
const (
	// maxOfflineBytes bounds the offline messages inside one LOGIN_ACK.
	maxOfflineBytes = 1 << 20
	MaxNameLen      = 50  // characters, users and groups
	MaxGroupDesc    = 200 // characters
	MinPasswordLen  = 6   // bytes
	MaxPasswordLen  = 72  // bytes, bcrypt's limit
)

// Node runs the services of one chatserver process. Its methods are safe for
// concurrent use.
type Node struct {
	cfg    Config
	store  Store
	bus    pubsub.Bus
	log    *slog.Logger
	tokens tokenSigner
	hub    *hub
	names  *nameCache
	// deadlines bound the store calls of requests (RequestTimeout).
	deadlines *requestDeadlines
	// members caches group member ids for group sends.
	members *memberCache
	// noUserHash is a bcrypt hash at BcryptCost that a password login for
	// a missing id is checked against, so that it takes as long as a
	// wrong password (as long as the users' hashes have that cost: a
	// hash keeps the cost it was made with).
	noUserHash func() []byte
	// hashing holds a token for each bcrypt run (PasswordWorkers).
	hashing chan struct{}

	sending atomic.Int64 // chat sends waiting for their commit

	ackMu sync.Mutex
	acks  map[AckKey]codec.Seq
	// flushing is the batch being written, still visible to logins until
	// it is committed.
	flushing map[AckKey]codec.Seq
	ackStop  chan struct{}
	ackDone  chan struct{}
	closeMu  sync.Once
}

// New builds a Node, loads the token key from the store and subscribes to
// the bus.
func New(ctx context.Context, cfg Config) (*Node, error) {
	if cfg.Store == nil || cfg.Bus == nil {
		return nil, errors.New("service: Store and Bus are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.BcryptCost == 0 {
		cfg.BcryptCost = bcrypt.DefaultCost
	}
	if cfg.BcryptCost < bcrypt.MinCost || cfg.BcryptCost > bcrypt.MaxCost {
		return nil, fmt.Errorf("service: bcrypt cost %d out of range %d..%d", cfg.BcryptCost, bcrypt.MinCost, bcrypt.MaxCost)
	}
	if cfg.TokenTTL <= 0 {
		cfg.TokenTTL = 7 * 24 * time.Hour
	}
	if cfg.OfflineCap <= 0 {
		cfg.OfflineCap = 500
	}
	if cfg.MaxMessageLen <= 0 {
		cfg.MaxMessageLen = 4096
	}
	if cfg.PumpWindow <= 0 {
		cfg.PumpWindow = 1 << 20
	}
	for _, l := range []struct {
		v   *int
		def int
	}{
		{&cfg.LoginGroupUsers, DefaultLoginGroupUsers}, {&cfg.LoginUsers, DefaultLoginUsers},
		{&cfg.MaxLoginAck, DefaultMaxLoginAck}, {&cfg.MaxFriends, DefaultMaxFriends},
		{&cfg.MaxGroups, DefaultMaxGroups}, {&cfg.MaxGroupMembers, DefaultMaxGroupMembers},
		{&cfg.MaxSending, DefaultMaxSending}, {&cfg.PasswordWorkers, max(1, runtime.GOMAXPROCS(0)/2)},
	} {
		if *l.v <= 0 {
			*l.v = l.def
		}
	}
	if cfg.AckFlushInterval <= 0 {
		cfg.AckFlushInterval = time.Second
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 5 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	key, err := cfg.Store.Secret(ctx)
	if err != nil {
		return nil, fmt.Errorf("service: token key: %w", err)
	}
	n := &Node{
		cfg: cfg, store: cfg.Store, bus: cfg.Bus, log: cfg.Logger,
		tokens:    tokenSigner{key: key, ttl: cfg.TokenTTL},
		hub:       newHub(),
		names:     newNameCache(1 << 14),
		deadlines: newRequestDeadlines(cfg.RequestTimeout),
		members:   newMemberCache(1 << 10),
		noUserHash: sync.OnceValue(func() []byte {
			h, _ := bcrypt.GenerateFromPassword([]byte("a password no user has"), cfg.BcryptCost)
			return h
		}),
		hashing: make(chan struct{}, cfg.PasswordWorkers),
		acks:    map[AckKey]codec.Seq{},
		ackStop: make(chan struct{}),
		ackDone: make(chan struct{}),
	}
	if err := cfg.Bus.Subscribe(busHandler{n}); err != nil {
		return nil, fmt.Errorf("service: subscribe: %w", err)
	}
	cfg.Store.SetCommitHook(n.committed)
	go n.ackLoop()
	return n, nil
}

// Close flushes pending acknowledgements. Call it after the server stopped
// handing requests to the node.
func (n *Node) Close() {
	n.closeMu.Do(func() {
		close(n.ackStop)
		<-n.ackDone
	})
}

// Open returns the session of a new connection.
func (n *Node) Open(t Transport) *Session {
	s := new(Session)
	n.Attach(s, t)
	return s
}

// Attach makes s, a zero Session, the session of a new connection. It lets
// the caller keep the session inside its own per-connection state (one
// allocation per connection instead of two); s must not be copied after.
func (n *Node) Attach(s *Session, t Transport) {
	s.t = t
}

// loginID names one login (Session.id) in presence and in cross-node
// kicks: 64 random bits, so a collision among a cluster's live sessions is
// negligible. A session keeps it as a number; the bus carries its String.
type loginID uint64

// newLoginID returns a new login's id.
func newLoginID() loginID {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return loginID(binary.BigEndian.Uint64(b[:]))
}

// String returns id as 16 hex digits, as the bus carries it.
func (id loginID) String() string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(id))
	return hex.EncodeToString(b[:])
}

// Closed ends a session whose connection is gone.
func (n *Node) Closed(s *Session) {
	s.mu.Lock()
	uid, sid := s.uid, s.id
	s.closed = true
	s.endLoginLocked()
	s.mu.Unlock()
	if uid != 0 {
		n.leave(uid, sid.String(), s)
	}
}

// leave removes s, logged out or closed, from the hub and its login sid
// from presence. It waits for a login of uid on this node to finish, so a
// session closed while it logs in leaves no presence behind.
func (n *Node) leave(uid codec.UserID, sid string, s *Session) {
	unlock := n.hub.lockUser(uid)
	defer unlock()
	n.leaveLocked(uid, sid, s)
}

// leaveLocked is leave for a caller that holds uid's lock (hub.lockUser).
func (n *Node) leaveLocked(uid codec.UserID, sid string, s *Session) {
	if n.hub.remove(uid, s) {
		ctx, cancel := context.WithTimeout(context.Background(), n.cfg.RequestTimeout)
		defer cancel()
		if err := n.bus.SetOffline(ctx, uid, sid); err != nil {
			n.log.Warn("presence: set offline", "user", uid, "err", err)
		}
	}
}

// committed is the store's commit hook: it publishes the new entries, one
// notice per recipient, in seq order.
func (n *Node) committed(entries []Entry) {
	notices := make([]pubsub.Notice, 0, len(entries))
	index := make(map[codec.UserID]int, len(entries))
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.RequestTimeout)
	defer cancel()
	entries = append(entries, n.groupEntries(ctx, entries)...)
	// Notice i's first delivery is firsts[i]: one array for them all (one
	// allocation, not one per recipient), each notice's slice of it capped,
	// so a second delivery to the same recipient copies it out.
	firsts := make([]codec.Delivery, 0, len(entries))
	for _, e := range entries {
		if i, ok := index[e.To]; ok {
			notices[i].Deliveries = append(notices[i].Deliveries, e.Delivery)
			continue
		}
		i := len(notices)
		index[e.To] = i
		firsts = append(firsts, e.Delivery)
		notices = append(notices, pubsub.Notice{To: e.To, Deliveries: firsts[i : i+1 : i+1]})
	}
	if err := n.bus.Publish(ctx, notices); err != nil {
		// The entries are stored; recipients get them at the next resync
		// or login.
		n.log.Warn("publish failed", "notices", len(notices), "err", err)
	}
}

// groupEntries prepares the group messages of a commit. A message's
// entries are adjacent and equal but for To: they share one encoded frame.
// And it returns entries for members who joined a group while a message
// to it was on its way to the commit: its recipients were read before the
// join (or from a cached list), but it was stored after it, so it is in
// their backlog. Such a group has more members now than the message has
// entries (its recipients and its sender): one count per commit finds
// them. A member who joined after the commit gets an entry too, and drops
// it: the message is not above its start.
func (n *Node) groupEntries(ctx context.Context, entries []Entry) []Entry {
	type run struct{ lo, hi int }
	var runs []run
	var gids []codec.GroupID
	for i := 0; i < len(entries); {
		d := &entries[i].Delivery
		j := i + 1
		if d.GSeq > 0 {
			d.Encode()
			for ; j < len(entries) && entries[j].Delivery.GSeq == d.GSeq && entries[j].Delivery.GroupID == d.GroupID; j++ {
				entries[j].Delivery = *d
			}
			runs = append(runs, run{i, j})
			if !slices.Contains(gids, d.GroupID) {
				gids = append(gids, d.GroupID)
			}
		}
		i = j
	}
	if len(runs) == 0 {
		return nil
	}
	sizes, err := n.store.GroupSizes(ctx, gids)
	if err != nil {
		n.log.Warn("group sizes after commit", "groups", len(gids), "err", err)
		return nil
	}
	var extra []Entry
	fresh := map[codec.GroupID][]codec.UserID{} // member lists read by this commit
	for _, r := range runs {
		msg := entries[r.lo:r.hi]
		d := msg[0].Delivery
		if sizes[d.GroupID] <= len(msg) {
			continue
		}
		ids, ok := fresh[d.GroupID]
		if !ok {
			if ids, err = n.loadMembers(ctx, d.GroupID); err != nil {
				n.log.Warn("group members after commit", "group", d.GroupID, "err", err)
				continue
			}
			fresh[d.GroupID] = ids
		}
		// A set of the message's recipients: a scan of msg for each member
		// made this members × members comparisons, seconds for a big group
		// on the goroutine that sends every ACK and delivery of the node.
		got := make(map[codec.UserID]struct{}, len(msg))
		for _, e := range msg {
			got[e.To] = struct{}{}
		}
		for _, id := range ids {
			if _, ok := got[id]; !ok {
				extra = append(extra, Entry{To: id, Delivery: d})
			}
		}
	}
	return extra
}

// busHandler is the node's pubsub.Handler.
type busHandler struct{ n *Node }

var _ pubsub.Handler = busHandler{}

func (h busHandler) Deliver(notices []pubsub.Notice) []pubsub.Notice { return h.n.deliver(notices) }
func (h busHandler) Resync()                                         { h.n.resyncAll() }

// Kick ends the local session of uid with the given id: the user logged in
// on another node.
func (h busHandler) Kick(uid codec.UserID, session string) {
	s := h.n.hub.get(uid)
	if s == nil {
		return
	}
	// Checked and done under s.mu, which a logout and a new login on the
	// connection take too: a later login there (a new id) is never ended.
	s.mu.Lock()
	ended := s.uid == uid && s.id.String() == session && h.n.hub.remove(uid, s) && s.kickLocked()
	s.mu.Unlock()
	if ended {
		s.t.Close()
	}
}

// deliver hands notices to local sessions and returns the others.
func (n *Node) deliver(notices []pubsub.Notice) (rest []pubsub.Notice) {
	for _, nt := range notices {
		s := n.hub.get(nt.To)
		if s == nil {
			rest = append(rest, nt)
			continue
		}
		s.mu.Lock()
		start := s.queuePumpsLocked(s.gen, s.offerLocked(nt.Deliveries, n.cfg.PumpWindow)...)
		gen := s.gen
		s.mu.Unlock()
		if start {
			go n.pump(s, gen)
		}
	}
	return rest
}

// resyncAll makes every local session re-read its inbox and group logs:
// notices may have been lost. At most resyncParallel sessions' pumps that
// it started run at once.
func (n *Node) resyncAll() {
	go func() {
		sem := make(chan struct{}, resyncParallel)
		count := 0
		n.hub.each(func(s *Session) {
			// A slot first: a claimed stream holds its live deliveries
			// back until the pump reads it.
			sem <- struct{}{}
			gen, start, claimed := s.claimStreams()
			count += claimed
			if !start {
				<-sem // none claimed, or the session's pump runs already
				return
			}
			go func() {
				defer func() { <-sem }()
				n.pump(s, gen)
			}()
		})
		n.log.Info("resynced sessions", "streams", count)
	}()
}

const resyncParallel = 16

// resync makes one session re-read its inbox and group logs.
func (n *Node) resync(s *Session) {
	if gen, start, _ := s.claimStreams(); start {
		go n.pump(s, gen)
	}
}

// startPumps hands streams keys of login generation gen, pumping with
// their positions known, to the session's pump, and starts it if it is
// not running.
func (n *Node) startPumps(s *Session, gen uint32, keys []codec.GroupID) {
	if len(keys) == 0 {
		return
	}
	s.mu.Lock()
	start := s.queuePumpsLocked(gen, keys...)
	s.mu.Unlock()
	if start {
		go n.pump(s, gen)
	}
}

// pumpPage is how many inbox entries one pump read takes.
const pumpPage = 500

// pump is a session's one pump for login generation gen: it reads its
// queued streams (0: the inbox, else a group's log) from the store, a page
// of one stream at a time in turn, and writes the entries after what the
// session sent, in order, until each caught up with everything known. It
// goes at the client's pace: before each page it waits until less than
// PumpWindow waits unsent to the client (for all the streams together),
// and it writes at most about PumpWindow a page, so a long backlog never
// makes a client that reads look like a slow consumer. It ends when no
// stream is queued, the generation ends, or the connection closes.
func (n *Node) pump(s *Session, gen uint32) {
	last := codec.GroupID(-1)
	for {
		s.mu.Lock()
		if s.gen != gen {
			s.mu.Unlock()
			return // the generation's end stopped this pump
		}
		key, ok := s.nextQueuedLocked(last)
		if !ok {
			s.pumpOn = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		last = key
		if err := s.t.WaitOutbound(context.Background(), n.cfg.PumpWindow); err != nil {
			return // the connection closed
		}
		n.pumpPage(s, gen, key)
	}
}

// pumpPage reads and writes one page of stream key for the pump, and ends
// the stream's pumping when it caught up.
func (n *Node) pumpPage(s *Session, gen uint32, key codec.GroupID) {
	s.mu.Lock()
	st := s.streamLocked(key)
	if s.gen != gen || s.uid == 0 || st == nil {
		s.mu.Unlock()
		return
	}
	uid := s.uid
	after := st.sent
	st.recheck = false // this read sees what a resync so far was for
	s.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.RequestTimeout)
	var page []codec.Delivery
	var err error
	if key == 0 {
		page, err = n.store.Inbox(ctx, uid, after, pumpPage)
	} else {
		page, err = n.store.GroupLog(ctx, key, after, pumpPage)
	}
	cancel()
	if err != nil {
		n.log.Warn("inbox read failed; retrying", "user", uid, "group", key, "err", err)
		time.Sleep(time.Second)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gen != gen || s.uid == 0 {
		return
	}
	var out []byte
	full := false // the rest of the page waits for the client
	for i := range page {
		if len(out) >= n.cfg.PumpWindow {
			full = true
			break
		}
		d := &page[i]
		if _, seq := streamKey(d); seq == st.sent+1 {
			if key == 0 || d.ID != uid {
				out = appendDelivery(out, d)
			}
			st.sent = seq
		}
	}
	if len(out) > 0 {
		s.t.Send(out)
	}
	if st.sent > st.known {
		st.known = st.sent
	}
	if !full && len(page) < pumpPage && st.sent >= st.known && !st.recheck {
		st.pumping, st.queued = false, false
	}
}

// ackLoop writes coalesced DELIVERED acks every AckFlushInterval.
func (n *Node) ackLoop() {
	defer close(n.ackDone)
	t := time.NewTicker(n.cfg.AckFlushInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			n.flushAcks()
		case <-n.ackStop:
			n.flushAcks()
			return
		}
	}
}

func (n *Node) flushAcks() {
	n.ackMu.Lock()
	if len(n.acks) == 0 {
		n.ackMu.Unlock()
		return
	}
	batch := n.acks
	n.acks = make(map[AckKey]codec.Seq, len(batch))
	n.flushing = batch
	n.ackMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.RequestTimeout)
	defer cancel()
	err := n.store.Ack(ctx, batch)
	n.ackMu.Lock()
	n.flushing = nil
	n.ackMu.Unlock()
	if err != nil {
		n.log.Warn("ack flush failed; will retry", "users", len(batch), "err", err)
		n.ackMu.Lock()
		for uid, seq := range batch {
			if seq > n.acks[uid] {
				n.acks[uid] = seq
			}
		}
		n.ackMu.Unlock()
	}
}

func (n *Node) queueAck(k AckKey, seq codec.Seq) {
	n.ackMu.Lock()
	if seq > n.acks[k] {
		n.acks[k] = seq
	}
	n.ackMu.Unlock()
}

// pendingAck returns the highest acknowledgement of stream k not written
// yet (queued or being flushed).
func (n *Node) pendingAck(k AckKey) codec.Seq {
	n.ackMu.Lock()
	defer n.ackMu.Unlock()
	return max(n.acks[k], n.flushing[k])
}

// validName checks a user or group name: 1..MaxNameLen characters, no
// control characters, no leading or trailing spaces (MySQL's collation would
// ignore trailing ones, SQLite would not).
func validName(s string) error {
	n := utf8.RuneCountInString(s)
	if n < 1 || n > MaxNameLen {
		return fmt.Errorf("must be 1..%d characters", MaxNameLen)
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return errors.New("must not contain control characters")
		}
		if unicode.Is(unicode.Bidi_Control, r) {
			// They make a name display as another: "photo\u202Egnp.exe"
			// as "photoexe.png".
			return errors.New("must not contain bidirectional text controls")
		}
	}
	if strings.TrimSpace(s) != s {
		return errors.New("must not start or end with spaces")
	}
	return nil
}
