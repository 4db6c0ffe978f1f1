package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Config is one chatbench run. It is also handed to child processes (as
// JSON), with N, Groups and Rate already divided and Prefix made unique.
type Config struct {
	Scenario        string        `json:"scenario"`
	Addrs           []string      `json:"addrs"`
	RecvAddrs       []string      `json:"recv_addrs,omitempty"`
	ReconnectAddrs  []string      `json:"reconnect_addrs,omitempty"`
	N               int           `json:"n"`
	Duration        time.Duration `json:"duration"`
	Warmup          time.Duration `json:"warmup"`
	Drain           time.Duration `json:"drain"`
	Rate            float64       `json:"rate"`
	Size            int           `json:"size"`
	GroupSize       int           `json:"group_size"`
	Groups          int           `json:"groups"`
	SendersPerGroup int           `json:"senders_per_group"`
	Inflight        int           `json:"inflight"`
	PIDs            []int         `json:"pids,omitempty"`
	JSON            bool          `json:"-"`
	SourceIPs       int           `json:"source_ips"`
	Procs           int           `json:"procs"`
	Prefix          string        `json:"prefix"`
	Password        string        `json:"-"`
	Baseline        bool          `json:"baseline"`
	CompareBaseline bool          `json:"compare_baseline"`
	KillPID         int           `json:"kill_pid,omitempty"`
	CrossNode       bool          `json:"cross_node,omitempty"`
	AckInterval     time.Duration `json:"ack_interval"`
	ClientMsgID     bool          `json:"clientmsgid"`
	Concurrency     int           `json:"concurrency"`
	Timeout         time.Duration `json:"timeout"`
	RedisBench      string        `json:"redis_bench,omitempty"`
	BulkDB          string        `json:"bulk_db,omitempty"`
	Quiet           bool          `json:"-"`

	// ChildPassword carries Password to children (excluded above from
	// reports).
	ChildPassword string `json:"child_password,omitempty"`
}

// user is one benchmark user and its connection.
type user struct {
	idx   int
	name  string
	id    int64
	token string
	node  string // the node LOGIN_ACK named ("" if none)
	gid   int64  // group scenario: the user's group
	c     *bconn
}

// WorkerResult is what one chatbench process measured; the coordinator
// merges them.
type WorkerResult struct {
	Ledger        LedgerCounts `json:"ledger"`
	Fanout        int64        `json:"fanout"`
	Expected      int64        `json:"expected"`
	Users         int          `json:"users"`
	SignupSeconds float64      `json:"signup_seconds"`
	UsersReused   int          `json:"users_reused"` // -bulk-db: users of an earlier run, kept
	LoginSeconds  float64      `json:"login_seconds"`
	GroupSeconds  float64      `json:"group_seconds"`
	DrainSeconds  float64      `json:"drain_seconds"`
	Connected     int          `json:"connected"`
	ConnFailed    int          `json:"conn_failed"`
	Dropped       int          `json:"dropped"` // open connections that ended by themselves
	// Per message, after the drain: Lost counts the (message, recipient)
	// pairs of messages acked with errno 0 that the recipient never got,
	// Extra the deliveries of messages not acked with errno 0 or to a user
	// who is not their recipient.
	Lost          int64 `json:"lost"`
	Extra         int64 `json:"extra"`
	DrainTimedOut bool  `json:"drain_timed_out,omitempty"`
	// chat: users per node as LOGIN_ACK named it, the sender-recipient
	// pairs, and how many of them are on two different nodes
	Nodes      map[string]int `json:"nodes,omitempty"`
	Pairs      int            `json:"pairs,omitempty"`
	CrossPairs int            `json:"cross_node_pairs,omitempty"`
	// login storm
	Stormed      int          `json:"stormed"`
	Back         int          `json:"back"`
	StormFailed  int          `json:"storm_failed"`
	Retries      int64        `json:"retries"`
	AllBackNanos int64        `json:"all_back_nanos"`
	Reconnect    HistSnapshot `json:"reconnect"`
	Errors       []string     `json:"errors,omitempty"`
}

// LiveStats is the progress of one process.
type LiveStats struct {
	Sent, Acked, Delivered int64
	Connected              int64
	// Latency holds every latency recorded so far (only grows, so the
	// difference of two is what came between: HistSnapshot.Since).
	Latency HistSnapshot
}

// worker runs one process's share of a scenario, phase by phase.
type worker struct {
	cfg    Config
	ledger *Ledger
	dial   *dialer
	users  []*user
	pairs  int // chat: users[i] sends to users[pairs+i], for i < pairs
	// cmidBase is added to each sender's counter to make its clientmsgid:
	// 0, unless users of an earlier run were reused, whose clientmsgids
	// the server would take for retries of that run's messages.
	cmidBase uint64
	ss       []*sender
	from     map[*bconn][]*sender // recipient -> the senders all of whose messages it must get
	res      WorkerResult

	connected atomic.Int64
	errMu     sync.Mutex

	stopSend context.CancelFunc
	sendWG   sync.WaitGroup
	ackStop  chan struct{}
	ackDone  chan struct{}
}

func newWorker(cfg Config) *worker {
	return &worker{cfg: cfg, ledger: NewLedger(), dial: newDialer(cfg.SourceIPs)}
}

// phases lists the phases of each scenario, in order.
var phases = map[string][]string{
	"chat":    {"setup", "run", "drain", "close"},
	"group":   {"setup", "run", "drain", "close"},
	"connect": {"signup", "connect", "close"},
	"login":   {"setup", "storm", "close"},
}

func (w *worker) phase(ctx context.Context, name string) error {
	switch w.cfg.Scenario + "/" + name {
	case "chat/setup":
		return w.setupChat(ctx)
	case "group/setup":
		return w.setupGroup(ctx)
	case "chat/run", "group/run":
		return w.run(ctx)
	case "chat/drain", "group/drain":
		return w.drain(ctx)
	case "connect/signup":
		if w.cfg.Baseline {
			return nil
		}
		return w.signupPool(ctx)
	case "connect/connect":
		return w.connectAll(ctx)
	case "login/setup":
		return w.setupLogin(ctx)
	case "login/storm":
		return w.storm(ctx)
	case "chat/close", "group/close", "connect/close", "login/close":
		w.closeAll()
		return nil
	}
	return fmt.Errorf("unknown phase %s of scenario %s", name, w.cfg.Scenario)
}

func (w *worker) result() WorkerResult {
	w.res.Ledger = w.ledger.Counts()
	w.res.Users = len(w.users)
	w.res.Dropped = 0
	for _, u := range w.users {
		if u.c == nil {
			continue
		}
		select {
		case <-u.c.Done():
			w.res.Dropped++
		default:
		}
	}
	return w.res
}

// live is the worker's progress so far. Safe to call concurrently.
func (w *worker) live() LiveStats {
	return LiveStats{
		Sent: w.ledger.Sent.Load(), Acked: w.ledger.Acked.Load(), Delivered: w.ledger.Delivered.Load(),
		Connected: w.connected.Load(), Latency: w.ledger.Latency.Snapshot(),
	}
}

func (w *worker) noteErr(format string, args ...any) {
	w.errMu.Lock()
	defer w.errMu.Unlock()
	if len(w.res.Errors) < 10 {
		w.res.Errors = append(w.res.Errors, fmt.Sprintf(format, args...))
	}
}

// makeUsers creates the user list (no connections yet).
func (w *worker) makeUsers(n int) {
	w.users = make([]*user, n)
	for i := range w.users {
		w.users[i] = &user{idx: i, name: w.cfg.Prefix + strconv.Itoa(i)}
	}
}

// parallel runs fn(i) for i in [0, n) on at most conc goroutines and
// returns the first error.
func parallel(ctx context.Context, n, conc int, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next  atomic.Int64
		once  sync.Once
		first error
		wg    sync.WaitGroup
	)
	for g := 0; g < min(conc, n); g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := fn(ctx, i); err != nil {
					once.Do(func() { first = err; cancel() })
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// hint explains common setup failures.
func hint(err error) error {
	var se *ServerErr
	if errors.As(err, &se) {
		switch se.Errno {
		case 7:
			return fmt.Errorf("%w (user or group name taken: use another -prefix)", err)
		case 8:
			return fmt.Errorf("%w (server rate limit: start chatserver with -rate -1)", err)
		}
	}
	return err
}

// connectUser dials addr and, unless the user has no id yet and signup is
// false, logs the user in; with signup it signs the user up first (on the
// same connection). The connection is kept in u.c.
func (w *worker) connectUser(ctx context.Context, u *user, addr string, signup bool, recv func(*bconn)) error {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	defer cancel()
	nc, err := w.dial.dial(ctx, addr)
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	c := newConn(nc)
	if recv != nil {
		recv(c)
	}
	c.start()
	u.c = c
	if signup {
		id, err := c.signup(ctx, u.name, w.cfg.ChildPassword)
		if err != nil {
			return fmt.Errorf("signup %s: %w", u.name, hint(err))
		}
		u.id = id
		return nil
	}
	return w.loginUser(ctx, u)
}

// loginUser logs u in on its connection with the password.
func (w *worker) loginUser(ctx context.Context, u *user) error {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	defer cancel()
	tok, node, err := u.c.login(ctx, u.id, w.cfg.ChildPassword, "")
	if err != nil {
		return fmt.Errorf("login %s: %w", u.name, hint(err))
	}
	u.token, u.node = tok, node
	w.connected.Add(1)
	return nil
}

// receiveHooks installs delivery accounting on a recipient connection.
func (w *worker) receiveHooks(c *bconn) {
	c.ackNow = w.cfg.AckInterval <= 0
	c.onDelivery = func(c *bconn, g *groupPos, seq int64, msg []byte, now int64) {
		c.lmu.Lock()
		if g != nil {
			w.ledger.observeGroup(&c.rs, &g.trk, seq, msg, now)
		} else {
			w.ledger.observe(&c.rs, seq, msg, now)
		}
		c.lmu.Unlock()
	}
}

// signupAndLogin gives every user its own connection, users [0, split) to
// addrs, the rest to recvAddrs: it creates the users (SIGNUP on that
// connection, or -bulk-db), then logs them in. Timings go to the result.
func (w *worker) signupAndLogin(ctx context.Context, split int) error {
	recvAddrs := w.cfg.RecvAddrs
	if len(recvAddrs) == 0 {
		recvAddrs = w.cfg.Addrs
	}
	addrOf := func(i int) string {
		if i >= split {
			return recvAddrs[i%len(recvAddrs)]
		}
		return w.cfg.Addrs[i%len(w.cfg.Addrs)]
	}
	t0 := time.Now()
	if w.cfg.BulkDB != "" {
		reused, err := bulkCreate(ctx, w.cfg.BulkDB, w.users, w.cfg.ChildPassword)
		if err != nil {
			return err
		}
		w.res.SignupSeconds, w.res.UsersReused = time.Since(t0).Seconds(), reused
		if reused > 0 {
			w.cmidBase = uint64(1+rand.Int32N(math.MaxInt32-1)) << 32
			// What reused users get of an earlier run's messages (its
			// unacknowledged backlog) is not this run's.
			w.ledger.since.Store(t0.UnixNano())
		}
		t0 = time.Now()
		err = parallel(ctx, len(w.users), w.cfg.Concurrency, func(ctx context.Context, i int) error {
			return w.connectUser(ctx, w.users[i], addrOf(i), false, w.receiveHooks)
		})
		w.res.LoginSeconds = time.Since(t0).Seconds()
		w.res.Connected = int(w.connected.Load())
		return err
	}
	err := parallel(ctx, len(w.users), w.cfg.Concurrency, func(ctx context.Context, i int) error {
		return w.connectUser(ctx, w.users[i], addrOf(i), true, w.receiveHooks)
	})
	w.res.SignupSeconds = time.Since(t0).Seconds()
	if err != nil {
		return err
	}
	t0 = time.Now()
	err = parallel(ctx, len(w.users), w.cfg.Concurrency, func(ctx context.Context, i int) error {
		return w.loginUser(ctx, w.users[i])
	})
	w.res.LoginSeconds = time.Since(t0).Seconds()
	w.res.Connected = int(w.connected.Load())
	return err
}

// setupChat: users [0, n/2) send to users [n/2, n), sender i to n/2+i;
// with CrossNode, each sender to a recipient on another node instead.
func (w *worker) setupChat(ctx context.Context) error {
	w.makeUsers(w.cfg.N - w.cfg.N%2)
	if len(w.users) < 2 {
		return errors.New("chat needs -n >= 2 per process")
	}
	if err := w.signupAndLogin(ctx, len(w.users)/2); err != nil {
		return err
	}
	w.pairs = len(w.users) / 2
	if w.cfg.CrossNode {
		var err error
		if w.users, w.pairs, err = crossNodePairs(w.users); err != nil {
			return err
		}
	}
	w.res.Nodes = map[string]int{}
	for _, u := range w.users {
		if u.node != "" {
			w.res.Nodes[u.node]++
		}
	}
	w.res.Pairs = w.pairs
	for i, u := range w.users[:w.pairs] {
		if r := w.users[w.pairs+i]; u.node != "" && r.node != "" && u.node != r.node {
			w.res.CrossPairs++
		}
	}
	w.res.Fanout = 1
	w.startAcker()
	return nil
}

// crossNodePairs orders logged-in users for the chat scenario so that, for
// i < m, users[i] sends to users[m+i] and the two are on different nodes
// (user.node, from LOGIN_ACK), as many pairs as the nodes' counts allow;
// users without such a partner follow, idle. Pairs alternate direction, so
// with two nodes about half the messages go each way.
func crossNodePairs(users []*user) (ordered []*user, m int, err error) {
	count := map[string]int{}
	for _, u := range users {
		if u.node == "" {
			return nil, 0, errors.New("-cross-node: the server did not name its node in LOGIN_ACK")
		}
		count[u.node]++
	}
	if len(count) < 2 {
		return nil, 0, fmt.Errorf("-cross-node: all %d users logged in on node %q; connect through nginx in front of the cluster, or list several nodes in -addr", len(users), users[0].node)
	}
	// Each node's users in one block, the largest node first.
	l := slices.Clone(users)
	slices.SortStableFunc(l, func(a, b *user) int {
		if c := count[b.node] - count[a.node]; c != 0 {
			return c
		}
		return strings.Compare(a.node, b.node)
	})
	n, big := len(l), count[l[0].node]
	// No node has more than half the users: l[i] and l[i+n/2] are n/2
	// apart, farther than any node's block is long. Otherwise the largest
	// node's users partner everyone else, and the rest of them stay idle.
	off := n / 2
	if 2*big > n {
		off = big
	}
	m = min(n/2, n-big)
	senders, recipients := make([]*user, m), make([]*user, m)
	for i := 0; i < m; i++ {
		a, b := l[i], l[off+i]
		if i%2 == 1 {
			a, b = b, a
		}
		senders[i], recipients[i] = a, b
	}
	ordered = append(append(senders, recipients...), l[m:off]...)
	ordered = append(ordered, l[off+m:]...)
	return ordered, m, nil
}

// setupGroup: groups of GroupSize consecutive users; the first creates the
// group, the others join; the first SendersPerGroup members send.
func (w *worker) setupGroup(ctx context.Context) error {
	g, size := w.cfg.Groups, w.cfg.GroupSize
	if g < 1 || size < 2 {
		return errors.New("group needs -groups >= 1 per process and -group-size >= 2")
	}
	w.makeUsers(g * size)
	if err := w.signupAndLogin(ctx, len(w.users)); err != nil {
		return err
	}
	t0 := time.Now()
	gids := make([]int64, g)
	err := parallel(ctx, g, w.cfg.Concurrency, func(ctx context.Context, k int) error {
		ctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
		defer cancel()
		name := fmt.Sprintf("%sg%d", w.cfg.Prefix, k)
		if w.cmidBase != 0 { // reused users: an earlier run's groups have the plain names
			name += fmt.Sprintf("r%x", w.cmidBase>>32)
		}
		gid, err := w.users[k*size].c.createGroup(ctx, name)
		gids[k] = gid
		if err != nil {
			return fmt.Errorf("create group: %w", hint(err))
		}
		return nil
	})
	if err != nil {
		return err
	}
	err = parallel(ctx, len(w.users), w.cfg.Concurrency, func(ctx context.Context, i int) error {
		if i%size == 0 {
			return nil // the creator is a member
		}
		ctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
		defer cancel()
		if err := w.users[i].c.addGroup(ctx, gids[i/size]); err != nil {
			return fmt.Errorf("join group: %w", hint(err))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for i, u := range w.users {
		u.gid = gids[i/size]
		// Every member joined before anything is sent: each must see the
		// group's whole log, from gseq 1, through deliveries and its own
		// ACKs.
		u.c.group(u.gid, 1)
	}
	w.res.GroupSeconds = time.Since(t0).Seconds()
	w.res.Fanout = int64(size - 1)
	w.startAcker()
	return nil
}

// ackSlices is how many turns the acker spreads the connections over in
// one AckInterval (fewer below 20 ms: a turn is at least 1 ms).
const ackSlices = 20

// ackTurns is the number of turns in an interval of every.
func ackTurns(every time.Duration) int {
	return int(min(max(every/time.Millisecond, 1), ackSlices))
}

// startAcker sends each connection's coalesced DELIVERED once every
// AckInterval. With n = ackTurns(AckInterval) turns (20 from 20 ms up),
// connection i goes in turn i mod n, one turn every AckInterval/n, so the
// DELIVERED frames are spread over the interval as independent clients
// would send them. Sending every connection's at once made a burst of one
// frame per receiving connection (1,000 with -n 2000) every interval,
// which delays the sends behind it on both sides. A turn that runs late
// delays the next (the ticker drops ticks), never skips one.
func (w *worker) startAcker() {
	w.ackStop, w.ackDone = make(chan struct{}), make(chan struct{})
	if w.cfg.AckInterval <= 0 {
		close(w.ackDone)
		return
	}
	go func() {
		defer close(w.ackDone)
		turns := ackTurns(w.cfg.AckInterval)
		t := time.NewTicker(w.cfg.AckInterval / time.Duration(turns))
		defer t.Stop()
		for turn := 0; ; turn = (turn + 1) % turns {
			select {
			case <-w.ackStop:
				return
			case <-t.C:
				w.ackTurn(turn, turns)
			}
		}
	}()
}

// ackTurn sends the coalesced DELIVERED of the connections in turn turn of
// turns: those of users turn, turn+turns, turn+2*turns...
func (w *worker) ackTurn(turn, turns int) {
	for i := turn; i < len(w.users); i += turns {
		if c := w.users[i].c; c != nil {
			c.flushAck()
		}
	}
}

// sender is one sending connection and its target.
type sender struct {
	idx   int32
	c     *bconn
	to    int64    // user id, or group id
	rcpt  []*bconn // who must get each of its messages
	slots chan struct{}
	count uint64
}

// senders lists who sends to whom, in w.ss, and each recipient's senders,
// in w.from, and installs the senders' ACK hooks.
func (w *worker) senders() []*sender {
	var ss []*sender
	if w.cfg.Scenario == "chat" {
		for i := 0; i < w.pairs; i++ {
			r := w.users[w.pairs+i]
			ss = append(ss, &sender{c: w.users[i].c, to: r.id, rcpt: []*bconn{r.c}})
		}
	} else {
		size := w.cfg.GroupSize
		for k := 0; k < w.cfg.Groups; k++ {
			members := w.users[k*size : k*size+size]
			for j := 0; j < min(w.cfg.SendersPerGroup, size); j++ {
				s := &sender{c: members[j].c, to: members[j].gid}
				for _, m := range members {
					if m != members[j] {
						s.rcpt = append(s.rcpt, m.c)
					}
				}
				ss = append(ss, s)
			}
		}
	}
	w.ss, w.from = ss, map[*bconn][]*sender{}
	for i, s := range ss {
		s.idx = int32(i)
		for _, r := range s.rcpt {
			w.from[r] = append(w.from[r], s)
		}
		s.slots = make(chan struct{}, max(w.cfg.Inflight, 1))
		s.c.onAck = func(c *bconn, p pend, errno, gseq int64, now int64) {
			w.onAck(c, p, errno, gseq, now)
			select {
			case <-s.slots:
			default:
			}
		}
	}
	return ss
}

// onAck accounts the ACK of a chat send; a GROUP_CHAT ACK's gseq is the
// sender's own message's position in the group log, which the sender, a
// member, is not sent.
func (w *worker) onAck(c *bconn, p pend, errno, gseq int64, now int64) {
	w.ledger.acked(p.sendNanos, now, errno)
	if errno != 0 {
		return
	}
	if p.counter > 0 {
		c.lmu.Lock()
		c.acked.testAndSet(p.counter)
		c.lmu.Unlock()
	}
	if gseq > 0 && p.gid > 0 {
		w.ledger.ownGroupSeq(&c.group(p.gid, 0).trk, gseq)
	}
}

// run sends for Warmup+Duration and stops the senders.
func (w *worker) run(ctx context.Context) error {
	ss := w.senders()
	t0 := time.Now()
	end := t0.Add(w.cfg.Warmup + w.cfg.Duration)
	w.ledger.SetWindow(t0.Add(w.cfg.Warmup).UnixNano(), end.UnixNano())
	sctx, cancel := context.WithCancel(ctx)
	w.stopSend = cancel
	perSender := 0.0
	if w.cfg.Rate > 0 {
		perSender = w.cfg.Rate / float64(len(ss))
	}
	for _, s := range ss {
		w.sendWG.Add(1)
		go w.sendLoop(sctx, s, perSender, end)
	}
	select {
	case <-time.After(time.Until(end)):
	case <-ctx.Done():
	}
	if perSender > 0 {
		// Paced senders still write what was due before the end, however
		// late, for at most Drain: a stall at the end of the window counts
		// like one in the middle.
		done := make(chan struct{})
		go func() { w.sendWG.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(w.cfg.Drain):
		case <-ctx.Done():
		}
	}
	cancel()
	w.sendWG.Wait()
	return ctx.Err()
}

// sendLoop sends as fast as Inflight allows (rate 0), or paced at rate/s
// on the sender's own schedule: message k is due at start + k/rate and is
// stamped with that time however late it is written (behind a full
// in-flight window, or a goroutine scheduled late), so its latencies count
// the wait, as a user's would, instead of leaving it out (coordinated
// omission). How late each is written goes to the ledger's SendLag. A flat
// out message is stamped when it is written.
func (w *worker) sendLoop(ctx context.Context, s *sender, rate float64, end time.Time) {
	defer w.sendWG.Done()
	group := w.cfg.Scenario == "group"
	body := make([]byte, 0, w.cfg.Size+64)
	// send writes the next message; due is its time on the schedule (0:
	// flat out).
	send := func(due int64) bool {
		select {
		case s.slots <- struct{}{}:
		case <-ctx.Done():
			return false
		case <-s.c.Done():
			w.noteErr("sender %d: connection ended: %v", s.idx, s.c.Err())
			return false
		}
		s.count++
		now := nowNanos()
		stamp := now
		if due > 0 {
			stamp = due
		}
		body = appendBody(body[:0], stamp, s.idx, s.count, w.cfg.Size)
		cmid := uint64(0)
		if w.cfg.ClientMsgID {
			cmid = w.cmidBase + s.count
		}
		if err := s.c.sendChat(group, s.to, stamp, s.count, body, cmid); err != nil {
			w.ledger.SendErr.Add(1)
			w.noteErr("sender %d: send: %v", s.idx, err)
			return false
		}
		w.ledger.sent(now)
		if due > 0 {
			w.ledger.lagged(due, now)
		}
		return true
	}
	if rate <= 0 {
		for send(0) {
		}
		return
	}
	// Paced: a ticker (at most every 2 ms) sends whatever is due, starting
	// at a random phase so senders do not tick in lockstep. (Above 500
	// msg/s per sender, messages wait up to a tick: that is in the lag.)
	interval := time.Duration(float64(time.Second) / rate)
	tick := max(interval, 2*time.Millisecond)
	select {
	case <-time.After(time.Duration(rand.Int64N(int64(tick)))):
	case <-ctx.Done():
		return
	}
	start := time.Now()
	base := start.UnixNano()
	t := time.NewTicker(tick)
	defer t.Stop()
	// Message k is due at start + k/rate; those due before end are sent,
	// after end too if they are late. What is left of them when the
	// sender is stopped was never written: DueUnsent.
	last := int64(math.Ceil(end.Sub(start).Seconds() * rate))
	var done int64
	defer func() {
		if done < last {
			w.ledger.DueUnsent.Add(last - done)
		}
	}()
	for done < last {
		n := min(int64(time.Since(start).Seconds()*rate)+1, last) // messages due so far
		for ; done < n; done++ {
			if !send(base + int64(float64(done)*float64(time.Second)/rate)) {
				return
			}
		}
		if done == last {
			return
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// drain waits, up to Drain, until every request has been answered and
// every message acked with errno 0 has reached each of its recipients; then
// it accounts loss per message (lossCheck). A drain that ends at Drain with
// either still short is noted in the result.
func (w *worker) drain(ctx context.Context) error {
	t0 := time.Now()
	deadline := t0.Add(w.cfg.Drain)
	l := w.ledger
	settled := false
	var nextCheck time.Time // the exact check compares sets: not every 10 ms
	for ctx.Err() == nil {
		answered := l.Acked.Load() + l.AckErr.Load()
		if answered >= l.Sent.Load() && l.Delivered.Load() >= l.Acked.Load()*w.res.Fanout && !time.Now().Before(nextCheck) {
			if lost, _ := w.lossCheck(); lost == 0 {
				settled = true
				break
			}
			nextCheck = time.Now().Add(100 * time.Millisecond)
		}
		if !time.Now().Before(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	w.res.DrainSeconds = time.Since(t0).Seconds()
	w.res.DrainTimedOut = !settled && ctx.Err() == nil
	w.res.Expected = l.Acked.Load() * w.res.Fanout
	w.res.Lost, w.res.Extra = w.lossCheck()
	var checked int64
	for _, u := range w.users {
		select {
		case <-u.c.Done():
			l.ConnLost.Add(1)
		default:
		}
		for _, g := range u.c.groupList() {
			checked += g.trk.checked.Load()
		}
	}
	l.GSeqChecked.Store(checked)
	return nil
}

// lossCheck compares, message by message, each sender's acked set (errno
// 0) with what each of its recipients received from it: lost counts the
// (message, recipient) pairs acked but not received, extra the messages
// received but not acked with errno 0, and any received by a user who is
// not their recipient. A count alone (acked * fan-out - delivered) would
// let an unacked delivery hide an acked message never delivered.
func (w *worker) lossCheck() (lost, extra int64) {
	acked := make([][]uint64, len(w.ss))
	for i, s := range w.ss {
		s.c.lmu.Lock()
		acked[i] = slices.Clone(s.c.acked.w)
		s.c.lmu.Unlock()
	}
	for _, u := range w.users {
		c := u.c
		if c == nil {
			continue
		}
		from := w.from[c]
		c.lmu.Lock()
		for _, s := range from {
			var seen []uint64
			if bs := c.rs.seen[s.idx]; bs != nil {
				seen = bs.w
			}
			lost += andNotCount(acked[s.idx], seen)
			extra += andNotCount(seen, acked[s.idx])
		}
		for idx, bs := range c.rs.seen {
			if !slices.ContainsFunc(from, func(s *sender) bool { return s.idx == idx }) {
				extra += bs.count()
			}
		}
		c.lmu.Unlock()
	}
	return lost, extra
}

func (w *worker) closeAll() {
	if w.ackStop != nil {
		close(w.ackStop)
		<-w.ackDone
		w.ackStop = nil
	}
	var wg sync.WaitGroup
	for _, u := range w.users {
		if u.c == nil {
			continue
		}
		acked := u.c.flushAck()
		wg.Add(1)
		go func(c *bconn) {
			defer wg.Done()
			// Close resets the connection, and a reset discards what the
			// server has not read yet: the DELIVERED just written, whose
			// messages a later run's login (-prefix) would then get again.
			// A PING after it, answered, says the server has read it.
			if acked {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_ = c.ping(ctx)
				cancel()
			}
			c.Close()
		}(u.c)
		u.c = nil
	}
	wg.Wait()
	w.connected.Store(0)
}
