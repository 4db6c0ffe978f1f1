package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/chatcluster/chatcluster/client"
	"github.com/chatcluster/chatcluster/codec"
)

// Timing of the session.
const (
	backoffMin     = 100 * time.Millisecond
	backoffMax     = 2 * time.Second
	defaultPing    = 20 * time.Second // -ping: keeps the connection alive; a dead one is noticed in 3x this
	requestTimeout = 15 * time.Second // one command, including waiting for a reconnect
	flushTimeout   = 3 * time.Second  // sending the last acknowledgements on logout or exit
	// deliveryBuffer must hold every offline message of a LOGIN_ACK (the
	// server's offline-cap, 500 by default): they are queued before Login
	// returns, and only then does printing start.
	deliveryBuffer = 4096
)

// position is how far the deliveries have got in each stream: the inbox
// (seq) and each group's log (gseq).
type position struct {
	seq    codec.Seq
	groups map[codec.GroupID]codec.Seq
}

// reached reports whether p is at or beyond want in every stream.
func (p position) reached(want position) bool {
	if p.seq < want.seq {
		return false
	}
	for gid, gseq := range want.groups {
		if p.groups[gid] < gseq {
			return false
		}
	}
	return true
}

// clone returns a copy of p that shares nothing with it.
func (p position) clone() position {
	return position{seq: p.seq, groups: maps.Clone(p.groups)}
}

// clientPosition is what c has put into its Deliveries channel so far.
func clientPosition(c *client.Client) position {
	return position{seq: c.LastSeq(), groups: c.GroupSeqs()}
}

// ackTo acknowledges everything up to p on c.
func ackTo(c *client.Client, p position) {
	c.Ack(p.seq)
	for gid, gseq := range p.groups {
		c.AckGroup(gid, gseq)
	}
}

// dialErr is a failed connect.
type dialErr struct {
	addr string
	err  error
}

func (e *dialErr) Error() string { return dialError(e.addr, e.err) }
func (e *dialErr) Unwrap() error { return e.err }

// session is the user's view of the server: it wraps a client.Client,
// prints deliveries and acknowledges each one only after it was printed,
// and when the connection drops it connects again, logs in with the
// session token and resumes after the last printed message.
//
// All methods are safe for concurrent use; one goroutine (run) consumes
// deliveries while a user is logged in. Lock order: s.mu, then the
// printer's lock (connection notices are printed under s.mu, so that they
// come out before the change they announce can be seen).
type session struct {
	addr string
	p    *printer
	opts client.Options
	// reconnectLimit is how long reconnecting may fail before the session
	// gives up; zero retries forever.
	reconnectLimit time.Duration

	mu       sync.Mutex
	changed  chan struct{}  // closed and replaced whenever a field below changes
	idle     *client.Client // connection for signup and login, not logged in
	c        *client.Client // the logged-in connection; nil while reconnecting
	loggedIn bool           // from login until logout, quit or the session ends
	endErr   error          // why the last session ended by itself (kicked, ...)
	ended    chan struct{}  // closed when the current session ends by itself
	stop     chan struct{}  // closed on logout or quit
	runDone  chan struct{}  // closed when run has returned
	started  bool           // run was started for this session
	id       codec.UserID
	name     string
	token    string
	password string // kept in memory only, for logging in again if the token is refused
	friends  []friendEntry
	groups   []groupEntry
	statesAt time.Time
	printed  position // highest seq and gseqs printed (and so acknowledged)
}

func newSession(o options, p *printer, reconnectLimit time.Duration) *session {
	return &session{
		addr: o.addr, p: p, reconnectLimit: reconnectLimit,
		opts: client.Options{ManualAck: true, PingInterval: o.ping, DeliveryBuffer: deliveryBuffer,
			MaxRequest: o.maxFrame},
		changed: make(chan struct{}),
	}
}

// notifyLocked wakes everyone waiting for a change. s.mu must be held.
func (s *session) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// idleClient returns a connected, not logged-in client, dialling if needed;
// reused tells that it is an older connection, which may have been closed
// by the server without the client noticing yet.
func (s *session) idleClient(ctx context.Context) (c *client.Client, reused bool, err error) {
	s.mu.Lock()
	c = s.idle
	s.mu.Unlock()
	if c != nil && c.Err() == nil {
		return c, true, nil
	}
	c, err = client.Dial(ctx, s.addr, s.opts)
	if err != nil {
		return nil, false, &dialErr{s.addr, err}
	}
	s.mu.Lock()
	old := s.idle
	s.idle = c
	s.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return c, false, nil
}

// dropIdle forgets the idle connection (it failed or was logged in).
func (s *session) dropIdle(c *client.Client, closeIt bool) {
	s.mu.Lock()
	if s.idle == c {
		s.idle = nil
	}
	s.mu.Unlock()
	if closeIt {
		c.Close()
	}
}

// Signup registers a user and returns its id.
func (s *session) Signup(ctx context.Context, name, password string) (codec.UserID, error) {
	c, _, err := s.idleClient(ctx)
	if err != nil {
		return 0, err
	}
	id, err := c.Signup(ctx, name, password)
	if isConnErr(err) {
		s.dropIdle(c, true)
	}
	return id, err
}

// LoggedIn reports whether a user is logged in.
func (s *session) LoggedIn() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loggedIn
}

// Login logs in with a password. On success the caller prints the user's
// data and then calls Start, which prints the offline messages.
func (s *session) Login(ctx context.Context, id codec.UserID, password string) (*codec.LoginAck, error) {
	if s.LoggedIn() {
		return nil, errLoggedIn
	}
	var c *client.Client
	var ack *codec.LoginAck
	for {
		var reused bool
		var err error
		if c, reused, err = s.idleClient(ctx); err != nil {
			return nil, err
		}
		ack, err = c.Login(ctx, id, password)
		if err == nil {
			break
		}
		if !isConnErr(err) {
			return nil, err
		}
		s.dropIdle(c, true)
		if !reused {
			return nil, err
		}
		// The server closed the idle connection (a restart): try a new one.
	}
	s.dropIdle(c, false)
	s.mu.Lock()
	s.c, s.loggedIn, s.endErr = c, true, nil
	s.ended, s.stop, s.runDone = make(chan struct{}), make(chan struct{}), make(chan struct{})
	s.started = false
	s.id, s.password, s.printed = id, password, position{}
	s.setAckLocked(ack)
	s.notifyLocked()
	s.mu.Unlock()
	return ack, nil
}

// setAckLocked takes name, token, friends and groups from a LOGIN_ACK.
func (s *session) setAckLocked(ack *codec.LoginAck) {
	s.name, s.token, s.statesAt = ack.Name, ack.Token, time.Now()
	s.friends = s.friends[:0]
	for _, f := range ack.Friends {
		s.friends = append(s.friends, friendEntry{Friend: f})
	}
	s.groups = s.groups[:0]
	for _, g := range ack.Groups {
		s.groups = append(s.groups, groupEntry{Group: g})
	}
}

// Start begins printing deliveries of the session that Login opened, and
// returns the position up to which the LOGIN_ACK's offline messages go:
// WaitPrinted waits until they are on the screen. (Each group's backlog
// follows LOGIN_ACK; PrintBacklog waits for it.)
func (s *session) Start() position {
	s.mu.Lock()
	c, stop, ended, done := s.c, s.stop, s.ended, s.runDone
	if c == nil || s.started {
		s.mu.Unlock()
		return position{}
	}
	s.started = true
	s.mu.Unlock()
	go s.run(c, stop, ended, done)
	return clientPosition(c)
}

// Ended returns a channel closed when the current session ends by itself
// (kicked, or it could not reconnect); nil when nobody is logged in.
func (s *session) Ended() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.loggedIn {
		return nil
	}
	return s.ended
}

// EndErr returns why the last session ended by itself, or nil.
func (s *session) EndErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.endErr
}

// run prints deliveries, then reconnects whenever the connection drops,
// until the user logs out or quits or the session ends.
func (s *session) run(c *client.Client, stop, ended, done chan struct{}) {
	defer close(done)
	for {
		for d := range c.Deliveries() {
			s.p.Delivery(d)
			s.mu.Lock()
			s.markPrintedLocked(d)
			s.notifyLocked()
			s.mu.Unlock()
			// Only now that it is printed. A delivery is numbered either in
			// the inbox (seq) or in its group's log (gseq).
			if d.Seq > 0 {
				c.Ack(d.Seq)
			} else if d.GSeq > 0 {
				c.AckGroup(d.GroupID, d.GSeq)
			}
		}
		<-c.Done()
		select {
		case <-stop:
			return
		default:
		}
		select {
		case <-c.Kicked():
			s.end(ended, c.Err(), "logged in elsewhere; session closed")
			return
		default:
		}
		if c = s.reconnect(stop, ended); c == nil {
			return
		}
	}
}

// markPrintedLocked records that d was printed. s.mu must be held.
func (s *session) markPrintedLocked(d codec.Delivery) {
	switch {
	case d.Seq > 0:
		s.printed.seq = max(s.printed.seq, d.Seq)
	case d.GSeq > 0:
		if s.printed.groups == nil {
			s.printed.groups = make(map[codec.GroupID]codec.Seq)
		}
		s.printed.groups[d.GroupID] = max(s.printed.groups[d.GroupID], d.GSeq)
	}
}

// end closes the session because of err and prints msg. The line is
// printed before anyone can see the session end (a script exits then).
func (s *session) end(ended chan struct{}, err error, msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended != ended || !s.loggedIn {
		return
	}
	s.p.Error(msg)
	s.loggedIn, s.c, s.endErr = false, nil, err
	s.password, s.token = "", ""
	close(ended)
	s.notifyLocked()
}

// reconnect connects and logs in again, with backoff, and returns the new
// client; nil when the session was stopped or ended meanwhile.
func (s *session) reconnect(stop, ended chan struct{}) *client.Client {
	s.mu.Lock()
	s.p.Notice("connection lost; reconnecting…")
	s.c = nil
	s.notifyLocked()
	s.mu.Unlock()
	start, delay := time.Now(), backoffMin
	for {
		select {
		case <-stop:
			return nil
		case <-time.After(delay):
		}
		c, ack, err := s.relogin(stop)
		switch {
		case err == nil:
			s.mu.Lock()
			if s.ended != ended || !s.loggedIn {
				s.mu.Unlock()
				c.Close()
				return nil
			}
			s.setAckLocked(ack) // a fresh token, and fresh online states
			// Printed before commands can use the new connection.
			s.p.Notice(fmt.Sprintf("reconnected to %s as %s (resuming after message #%d)", s.addr, sanitize(s.name), s.printed.seq))
			s.c = c
			s.notifyLocked()
			s.mu.Unlock()
			return c
		case errors.Is(err, errEnded):
			return nil
		case client.ErrnoOf(err) == codec.ErrnoAuth:
			s.end(ended, err, "session expired; log in again")
			return nil
		case s.reconnectLimit > 0 && time.Since(start) >= s.reconnectLimit:
			s.end(ended, err, fmt.Sprintf("cannot reconnect to %s; giving up", s.addr))
			return nil
		}
		delay = min(delay*2, backoffMax)
	}
}

// relogin makes one attempt to connect and log in again: with the token,
// or with the password if the server refuses the token.
func (s *session) relogin(stop chan struct{}) (*client.Client, *codec.LoginAck, error) {
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	c, err := client.Dial(ctx, s.addr, s.opts)
	if err != nil {
		return nil, nil, err
	}
	s.mu.Lock()
	id, token, password := s.id, s.token, s.password
	printed := s.printed.clone()
	s.mu.Unlock()
	// Drop what was printed but not yet acknowledged. The client
	// acknowledges such group duplicates itself: a group's backlog follows
	// LOGIN_ACK, so the AckGroup below can come too early for the server.
	c.SetLastSeq(printed.seq)
	c.SetGroupSeqs(printed.groups)
	ack, err := c.LoginToken(ctx, id, token)
	if client.ErrnoOf(err) == codec.ErrnoAuth && password != "" {
		ack, err = c.Login(ctx, id, password)
	}
	if err != nil {
		c.Close()
		if ctx.Err() != nil && isClosed(stop) {
			return nil, nil, errEnded
		}
		return nil, nil, err
	}
	ackTo(c, printed) // what the server may not have heard before the drop
	return c, ack, nil
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// client waits until the session has a live connection.
func (s *session) client(ctx context.Context) (*client.Client, error) {
	for {
		s.mu.Lock()
		c, loggedIn, endErr, changed := s.c, s.loggedIn, s.endErr, s.changed
		s.mu.Unlock()
		switch {
		case !loggedIn && endErr != nil:
			return nil, errEnded
		case !loggedIn:
			return nil, errNotLoggedIn
		case c != nil && c.Err() == nil:
			return c, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return nil, errReconnect
			}
			return nil, ctx.Err()
		}
	}
}

// do runs f on a live connection. When the connection drops before the
// answer and retry is set, f runs again (attempt 1, 2) on the next one.
func (s *session) do(ctx context.Context, retry bool, f func(c *client.Client, attempt int) error) error {
	for attempt := 0; ; attempt++ {
		c, err := s.client(ctx)
		if err != nil {
			return err
		}
		err = f(c, attempt)
		if !isConnErr(err) || c.Err() == nil {
			return err
		}
		if !retry || attempt >= 2 {
			return errConnLost
		}
	}
}

// Chat sends a one-to-one message and returns its server time. A resend
// after a reconnect carries the same clientmsgid, so it is stored once.
func (s *session) Chat(ctx context.Context, to codec.UserID, msg string) (string, error) {
	var id, at string
	err := s.do(ctx, true, func(c *client.Client, _ int) error {
		if id == "" {
			id = c.NewClientMsgID()
		}
		ack, err := c.ChatWithID(ctx, to, msg, id)
		if err == nil {
			at = ack.Time
		}
		return err
	})
	return at, err
}

// GroupChat sends a message to a group and returns its server time.
func (s *session) GroupChat(ctx context.Context, gid codec.GroupID, msg string) (string, error) {
	var id, at string
	err := s.do(ctx, true, func(c *client.Client, _ int) error {
		if id == "" {
			id = c.NewClientMsgID()
		}
		ack, err := c.GroupChatWithID(ctx, gid, msg, id)
		if err == nil {
			at = ack.Time
		}
		return err
	})
	return at, err
}

// AddFriend adds a friend. On a resend, "already friends" means the first
// attempt worked.
func (s *session) AddFriend(ctx context.Context, id codec.UserID) error {
	err := s.do(ctx, true, func(c *client.Client, attempt int) error {
		err := c.AddFriend(ctx, id)
		if attempt > 0 && client.ErrnoOf(err) == codec.ErrnoConflict {
			err = nil
		}
		return err
	})
	if err == nil {
		s.mu.Lock()
		if !slices.ContainsFunc(s.friends, func(f friendEntry) bool { return f.ID == id }) {
			s.friends = append(s.friends, friendEntry{Friend: codec.Friend{ID: id}, Added: true})
		}
		s.mu.Unlock()
	}
	return err
}

// CreateGroup creates a group. It is not resent after a reconnect (a second
// attempt could not tell its own group from someone else's).
func (s *session) CreateGroup(ctx context.Context, name, desc string) (codec.GroupID, error) {
	var gid codec.GroupID
	err := s.do(ctx, false, func(c *client.Client, _ int) error {
		var err error
		gid, err = c.CreateGroup(ctx, name, desc)
		return err
	})
	if err == nil {
		s.mu.Lock()
		s.groups = append(s.groups, groupEntry{Group: codec.Group{
			ID: gid, Name: name, Desc: desc, Size: 1,
			Users: []codec.GroupUser{{ID: s.id, Name: s.name, State: codec.StateOnline, Role: codec.RoleCreator}},
		}})
		s.mu.Unlock()
	}
	return gid, err
}

// AddGroup joins a group. On a resend, "already a member" means the first
// attempt worked.
func (s *session) AddGroup(ctx context.Context, gid codec.GroupID) error {
	err := s.do(ctx, true, func(c *client.Client, attempt int) error {
		err := c.AddGroup(ctx, gid)
		if attempt > 0 && client.ErrnoOf(err) == codec.ErrnoConflict {
			err = nil
		}
		return err
	})
	if err == nil {
		s.mu.Lock()
		if !slices.ContainsFunc(s.groups, func(g groupEntry) bool { return g.ID == gid }) {
			s.groups = append(s.groups, groupEntry{Group: codec.Group{ID: gid}, Joined: true})
		}
		s.mu.Unlock()
	}
	return err
}

// GroupUsers lists every member of a group, a GROUP_USERS page at a time
// (each page retried after a reconnect: reading changes nothing).
func (s *session) GroupUsers(ctx context.Context, gid codec.GroupID) ([]codec.GroupUser, error) {
	var all []codec.GroupUser
	after, more := codec.UserID(0), true
	for more {
		var page []codec.GroupUser
		err := s.do(ctx, true, func(c *client.Client, _ int) error {
			var err error
			page, more, err = c.GroupUsers(ctx, gid, after, 0)
			return err
		})
		if err != nil {
			return nil, err
		}
		all = append(all, page...)
		if len(page) == 0 {
			break
		}
		after = page[len(page)-1].ID
	}
	return all, nil
}

// User returns the logged-in user's id and name.
func (s *session) User() (codec.UserID, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.id, s.name
}

// Lists returns copies of the friend and group lists and when the online
// states in them were current.
func (s *session) Lists() ([]friendEntry, []groupEntry, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.friends), slices.Clone(s.groups), s.statesAt
}

// WaitPrinted waits until every delivery up to pos has been printed (or the
// session is over).
func (s *session) WaitPrinted(ctx context.Context, pos position) error {
	for {
		s.mu.Lock()
		done, loggedIn, changed := s.printed.reached(pos), s.loggedIn, s.changed
		s.mu.Unlock()
		if done || !loggedIn {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// catchUp waits until everything the server has sent on c so far is
// printed: a PING round trip brings in every delivery sent before it.
func (s *session) catchUp(ctx context.Context, c *client.Client) error {
	if err := c.Ping(ctx); err != nil {
		return err
	}
	return s.WaitPrinted(ctx, clientPosition(c))
}

// PrintBacklog waits, after Start, until the groups' backlogs are printed
// too: they follow LOGIN_ACK as ordinary deliveries, so they are not in
// Start's position. It uses the connection Login opened and does nothing
// when that one is gone already (the session reconnects by itself).
func (s *session) PrintBacklog(ctx context.Context) error {
	s.mu.Lock()
	c := s.c
	s.mu.Unlock()
	if c == nil {
		return nil
	}
	return s.catchUp(ctx, c)
}

// Flush prints everything the server has sent so far (see catchUp) and
// makes sure the server has processed the acknowledgement for it. The
// DELIVERED frames that Ack and AckGroup queue may go out just after a PING
// queued at the same time, so two more round trips follow: the second PING
// is written after the first PONG came back, so after the DELIVERED, and
// the server handles a connection's requests in order.
func (s *session) Flush(ctx context.Context) error {
	c, err := s.client(ctx)
	if err != nil {
		return err
	}
	if err := s.catchUp(ctx, c); err != nil {
		return err
	}
	s.mu.Lock()
	printed := s.printed.clone()
	s.mu.Unlock()
	ackTo(c, printed)
	for range 2 {
		if err := c.Ping(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Logout acknowledges what was printed, sends LOGINOUT and ends the session.
func (s *session) Logout(ctx context.Context) error {
	if !s.LoggedIn() {
		return errNotLoggedIn
	}
	fctx, cancel := context.WithTimeout(ctx, flushTimeout)
	_ = s.Flush(fctx)
	cancel()
	var err error
	s.mu.Lock()
	c := s.c
	s.mu.Unlock()
	if c != nil {
		err = c.Logout(ctx)
		if isConnErr(err) {
			err = nil // the connection is gone: so is the session on the server
		}
	}
	s.shutdown()
	return err
}

// Close ends the session without logging out (the server sees the user go
// offline) after acknowledging what was printed, and closes every
// connection.
func (s *session) Close() {
	if s.LoggedIn() {
		ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
		_ = s.Flush(ctx)
		cancel()
	}
	s.shutdown()
	s.mu.Lock()
	idle := s.idle
	s.idle = nil
	s.mu.Unlock()
	if idle != nil {
		idle.Close()
	}
}

// shutdown stops run and closes the logged-in connection.
func (s *session) shutdown() {
	s.mu.Lock()
	if !s.loggedIn {
		s.mu.Unlock()
		return
	}
	c, stop, done, started := s.c, s.stop, s.runDone, s.started
	s.loggedIn, s.c = false, nil
	s.password, s.token = "", ""
	close(stop)
	s.notifyLocked()
	s.mu.Unlock()
	if c != nil {
		c.Close()
	}
	if started {
		<-done // run returns once the connection's deliveries are drained
	}
}
