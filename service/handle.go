package service

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
	"unicode"

	"golang.org/x/crypto/bcrypt"

	"github.com/chatcluster/chatcluster/codec"
)

// reqError is a handler failure with the errno the client sees.
type reqError struct {
	errno codec.Errno
	msg   string
}

func (e *reqError) Error() string { return e.msg }

// errWouldBlock: the answer needs a store read, and the caller asked for
// cached data only (HandleNow).
var errWouldBlock = errors.New("service: needs a store read")

// wouldBlock is errWouldBlock as a handler failure; HandleNow never sends
// it.
var wouldBlock = &reqError{errno: codec.ErrnoUnavailable, msg: errWouldBlock.Error()}

func fail(errno codec.Errno, format string, args ...any) *reqError {
	return &reqError{errno: errno, msg: fmt.Sprintf(format, args...)}
}

// storeFail maps a Store error to the client's errno.
func (n *Node) storeFail(op string, err error) *reqError {
	switch {
	case errors.Is(err, ErrNotFound):
		return fail(codec.ErrnoNotFound, "%s: not found", op)
	case errors.Is(err, ErrConflict):
		return fail(codec.ErrnoConflict, "%s: already exists", op)
	case errors.Is(err, ErrLimit):
		return fail(codec.ErrnoLimit, "%s", err.Error())
	}
	n.log.Warn("request failed: database or Redis unavailable", "op", op, "err", err)
	return fail(codec.ErrnoUnavailable, "%s: server unavailable, retry later", op)
}

// Handle runs one request frame of session s. The server calls it from a
// worker, one call at a time per session, in arrival order.
func (n *Node) Handle(s *Session, body []byte) {
	req, err := codec.ParseRequest(body)
	if err != nil || req.MsgID != codec.MsgOneChat && req.MsgID != codec.MsgGroupChat && req.MsgID != codec.MsgDelivered {
		// Chat sends complete asynchronously; answer nothing else (a
		// malformed send neither) before their ACKs, so responses keep
		// the order of the requests.
		s.sends.Wait()
	}
	if err != nil {
		n.reply(s, req, nil, fail(codec.ErrnoBadRequest, "%s", err.Error()))
		return
	}
	ctx := n.deadlines.context(time.Now())
	switch req.MsgID {
	case codec.MsgLogin:
		n.login(ctx, s, req)
	case codec.MsgSignup:
		n.signup(ctx, s, req)
	case codec.MsgPing:
		s.send(&codec.Pong{MsgID: codec.MsgPong, ReqID: req.ReqID})
	case codec.MsgLogout, codec.MsgOneChat, codec.MsgAddFriend, codec.MsgCreateGroup,
		codec.MsgAddGroup, codec.MsgGroupChat, codec.MsgDelivered, codec.MsgGroupUsers:
		uid, name := s.User()
		if uid == 0 {
			s.sends.Wait()
			n.reply(s, req, nil, fail(codec.ErrnoNotLoggedIn, "log in first"))
			return
		}
		n.loggedIn(ctx, s, req, uid, name)
	default:
		n.reply(s, req, nil, fail(codec.ErrnoBadRequest, "unknown or missing msgid %d", req.MsgID))
	}
}

// Reject answers a frame the server could not even hand to Handle (too
// large, empty): an ACK with ack 0.
func Reject(errno codec.Errno, msg string) []byte {
	return codec.MustMarshal(&codec.Ack{MsgID: codec.MsgAck, Errno: errno, ErrMsg: msg})
}

// HandleNow runs one request frame of session s if it can without blocking,
// and reports whether it did; when it did not, it did nothing, and the
// caller hands the frame to Handle. It runs a chat message whose recipient
// (a user, or a group the sender is in) is known without a store read, when
// the commit queue has room and the session's sends waiting for their
// commit leave room for it (roomToSend), and a valid DELIVERED: the
// requests that make up a chat's steady traffic. The server calls it on an
// event loop, for a session none of whose requests is queued or running,
// so it saves the hand-off to a worker (docs/BENCHMARKS-history.md,
// "Changes in session 9").
func (n *Node) HandleNow(s *Session, body []byte) bool {
	uid, name := s.User()
	if uid == 0 {
		return false // not parsed here: a worker will
	}
	req, err := codec.ParseRequest(body)
	if err != nil {
		return false
	}
	var (
		sr   SendRequest
		rerr *reqError
	)
	switch req.MsgID {
	case codec.MsgDelivered:
		if checkDelivered(req) != nil {
			return false // answered by Handle
		}
		n.ackDelivered(s, req, uid)
		return true
	case codec.MsgOneChat:
		sr, rerr = n.oneChat(context.Background(), req, uid, name, true)
	case codec.MsgGroupChat:
		sr, rerr = n.groupChat(context.Background(), req, uid, name, true)
	default:
		return false
	}
	return rerr == nil && n.roomToSend(s, sr) && n.trySendAsync(s, req, sr)
}

// reply sends the response for req: ack on success (nil err) or the error.
// LOGIN, SIGNUP and GROUP_USERS failures use their own ack msgid,
// everything else ACK.
func (n *Node) reply(s *Session, req *codec.Request, ack *codec.Ack, err *reqError) {
	if err != nil {
		switch req.MsgID {
		case codec.MsgLogin, codec.MsgSignup, codec.MsgGroupUsers:
			s.send(&codec.ErrorResponse{MsgID: req.MsgID + 1, ReqID: req.ReqID, Errno: err.errno, ErrMsg: err.msg})
		default:
			s.send(&codec.Ack{MsgID: codec.MsgAck, ReqID: req.ReqID, Ack: req.MsgID, Errno: err.errno, ErrMsg: err.msg})
		}
		return
	}
	if ack == nil {
		ack = &codec.Ack{}
	}
	ack.MsgID, ack.ReqID, ack.Ack, ack.ErrMsg = codec.MsgAck, req.ReqID, req.MsgID, "ok"
	s.send(ack)
}

func (n *Node) loggedIn(ctx context.Context, s *Session, req *codec.Request, uid codec.UserID, name string) {
	var (
		ack = &codec.Ack{}
		err *reqError
	)
	switch req.MsgID {
	case codec.MsgOneChat, codec.MsgGroupChat:
		var sr SendRequest
		if req.MsgID == codec.MsgOneChat {
			sr, err = n.oneChat(ctx, req, uid, name, false)
		} else {
			sr, err = n.groupChat(ctx, req, uid, name, false)
		}
		if err == nil {
			if !n.roomToSend(s, sr) {
				// Until the connection's earlier sends are stored: this
				// holds a worker for about a commit (as the ACK of a
				// refused send does below), which the connection's
				// bound on what waits makes rare for ordinary clients.
				s.sends.Wait()
			}
			n.sendAsync(ctx, s, req, sr)
			return
		}
		s.sends.Wait() // after the ACKs of earlier sends
	case codec.MsgLogout:
		err = n.logout(ctx, s, uid)
	case codec.MsgAddFriend:
		err = n.addFriend(ctx, req, uid)
	case codec.MsgCreateGroup:
		err = n.createGroup(ctx, s, req, uid, ack)
	case codec.MsgAddGroup:
		err = n.addGroup(ctx, s, req, uid)
	case codec.MsgGroupUsers:
		if err = n.groupUsers(ctx, s, req, uid); err == nil {
			return // answered with GROUP_USERS_ACK
		}
	case codec.MsgDelivered:
		if err = n.delivered(s, req, uid); err == nil {
			return // DELIVERED has no response
		}
		s.sends.Wait()
	}
	n.reply(s, req, ack, err)
}

func requireID(v *int64, field string) (int64, *reqError) {
	if v == nil {
		return 0, fail(codec.ErrnoBadRequest, "missing field %q", field)
	}
	if *v <= 0 {
		return 0, fail(codec.ErrnoBadRequest, "field %q must be a positive integer", field)
	}
	return *v, nil
}

func requireString(v *string, field string) (string, *reqError) {
	if v == nil {
		return "", fail(codec.ErrnoBadRequest, "missing field %q", field)
	}
	return *v, nil
}

func (n *Node) signup(ctx context.Context, s *Session, req *codec.Request) {
	name, rerr := requireString(req.Name, "name")
	if rerr == nil {
		if err := validName(name); err != nil {
			rerr = fail(codec.ErrnoBadRequest, "name %s", err)
		}
	}
	var password string
	if rerr == nil {
		password, rerr = requireString(req.Password, "password")
	}
	if rerr == nil && (len(password) < MinPasswordLen || len(password) > MaxPasswordLen) {
		rerr = fail(codec.ErrnoBadRequest, "password must be %d..%d bytes", MinPasswordLen, MaxPasswordLen)
	}
	if rerr != nil {
		n.reply(s, req, nil, rerr)
		return
	}
	var (
		hash []byte
		err  error
	)
	if n.passwordWork(ctx, func() { hash, err = bcrypt.GenerateFromPassword([]byte(password), n.cfg.BcryptCost) }) != nil {
		n.reply(s, req, nil, busy("signup"))
		return
	}
	if err != nil {
		n.reply(s, req, nil, fail(codec.ErrnoBadRequest, "password rejected: %v", err))
		return
	}
	id, err := n.store.CreateUser(ctx, name, hash)
	if errors.Is(err, ErrConflict) {
		n.reply(s, req, nil, fail(codec.ErrnoConflict, "name %q is taken", name))
		return
	}
	if err != nil {
		n.reply(s, req, nil, n.storeFail("signup", err))
		return
	}
	n.names.put(id, name)
	s.send(&codec.SignupAck{MsgID: codec.MsgSignupAck, ReqID: req.ReqID, ErrMsg: "ok", ID: id})
}

// passwordWork runs fn, a bcrypt hash or comparison, once fewer than
// PasswordWorkers of them run, or returns ctx's error first. bcrypt is
// slow on purpose: without this bound a few connections sending LOGINs
// with wrong passwords (or SIGNUPs) would take every CPU from the chat.
// Token logins do not hash.
func (n *Node) passwordWork(ctx context.Context, fn func()) error {
	select {
	case n.hashing <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-n.hashing }()
	fn()
	return nil
}

// busy is the answer to a request that waited too long for password work.
func busy(op string) *reqError {
	return fail(codec.ErrnoUnavailable, "%s: server busy, retry later", op)
}

func (n *Node) login(ctx context.Context, s *Session, req *codec.Request) {
	rawID, rerr := requireID(req.ID, "id")
	if rerr == nil && req.Password == nil && req.Token == nil {
		rerr = fail(codec.ErrnoBadRequest, "login needs \"password\" or \"token\"")
	}
	if rerr != nil {
		n.reply(s, req, nil, rerr)
		return
	}
	if cur, _ := s.User(); cur != 0 {
		n.reply(s, req, nil, fail(codec.ErrnoConflict, "already logged in as %d; send LOGINOUT first", cur))
		return
	}
	uid := codec.UserID(rawID)
	wrong := fail(codec.ErrnoAuth, "wrong id, password or token")
	// bcrypt reads only a password's first 72 bytes: a longer one (SIGNUP
	// takes none) would log in with whatever follows them.
	if req.Token == nil && len(*req.Password) > MaxPasswordLen {
		n.reply(s, req, nil, wrong)
		return
	}
	u, err := n.store.User(ctx, uid)
	missing := errors.Is(err, ErrNotFound)
	if err != nil && !missing {
		n.reply(s, req, nil, n.storeFail("login", err))
		return
	}
	if req.Token != nil {
		version, err := n.tokens.verify(*req.Token, uid, n.cfg.Now())
		if missing || err != nil || version != u.TokenVersion {
			n.reply(s, req, nil, wrong)
			return
		}
	} else {
		// A missing id is checked against a hash all the same, so that
		// how long the answer takes does not tell whether it exists.
		var bad error
		if n.passwordWork(ctx, func() {
			hash := u.PasswordHash
			if missing {
				hash = n.noUserHash()
			}
			bad = bcrypt.CompareHashAndPassword(hash, []byte(*req.Password))
		}) != nil {
			n.reply(s, req, nil, busy("login"))
			return
		}
		if missing || bad != nil {
			n.reply(s, req, nil, wrong)
			return
		}
	}
	// The name cache is not filled here: a send to a user with a session on
	// this node finds it in the hub (see userExists), so idle logged-in
	// connections cost no cache entry.

	// Become the user's session first, so every entry committed from now on
	// reaches this session (held back while pumping), then read the inbox.
	// The user's lock orders this against the user's other logins and
	// leaves on this node: presence then names the session the hub holds.
	unlock := n.hub.lockUser(uid)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		unlock()
		return
	}
	s.uid, s.name, s.id = uid, u.Name, newLoginID()
	s.inbox, s.groups, s.loggingIn = stream{pumping: true}, nil, true
	s.newGenLocked()
	gen, sid := s.gen, s.id.String()
	s.mu.Unlock()
	// The hub, then presence, then the inbox read: once another node can
	// see this session in presence (and kick it), the hub holds it; and a
	// sender that misses this presence committed before the read below, so
	// the read sees its entry.
	old := n.hub.swap(uid, s)
	if err := n.bus.SetOnline(ctx, uid, sid); err != nil {
		// Leave the user's current session be: put it back, and let it
		// re-read its inbox for anything that reached s meanwhile.
		if old != nil && old != s && n.hub.replace(uid, s, old) {
			n.resync(old)
		}
		n.endLogin(s, gen)
		n.leaveLocked(uid, sid, s)
		unlock()
		n.reply(s, req, nil, n.storeFail("login", fmt.Errorf("%w: presence: %v", ErrUnavailable, err)))
		return
	}
	if old != nil && old != s {
		n.kick(old)
	}
	unlock()

	ack, groups, acked, complete, err := n.loginAck(ctx, uid, u)
	if err != nil {
		n.unbind(s, uid, sid, gen)
		n.reply(s, req, nil, n.storeFail("login", err))
		return
	}
	ack.ReqID = req.ReqID
	frame, complete, rerr := n.fitLoginAck(ack, complete)
	if rerr != nil {
		n.unbind(s, uid, sid, gen)
		n.reply(s, req, nil, rerr)
		return
	}
	s.mu.Lock()
	if s.gen != gen {
		s.mu.Unlock()
		return // kicked or closed meanwhile
	}
	s.t.Send(frame)
	st := &s.inbox
	if k := len(ack.OfflineMsg); k > 0 {
		st.sent = ack.OfflineMsg[k-1].Seq
	} else {
		st.sent = acked
	}
	if st.sent > st.known {
		st.known = st.sent
	}
	var pumps []codec.GroupID
	if s.needsPumpLocked(complete) {
		pumps = append(pumps, 0)
	}
	// Each group's backlog follows LOGIN_ACK as deliveries.
	s.loggingIn = false
	listed := make(map[codec.GroupID]bool, len(groups))
	for _, g := range groups {
		listed[g.ID] = true
		if s.setGroupLocked(g.ID, g.Acked, g.Last) {
			pumps = append(pumps, g.ID)
		}
	}
	var unlisted []codec.GroupID // joined (by another session) after the groups were read
	for g := range s.groups {
		if !listed[g] {
			unlisted = append(unlisted, g)
		}
	}
	s.mu.Unlock()
	n.log.Debug("login", "user", uid)
	// Send the rest of the backlogs and anything that arrived meanwhile,
	// at the client's pace: not on this worker, which the client's next
	// requests (and everyone else's) need.
	n.startPumps(s, gen, pumps)
	if len(unlisted) > 0 {
		n.followGroups(ctx, s, gen, uid, unlisted)
	}
}

// followGroups makes s follow groups of its user from the user's stored
// position in each, when the session missed the join: a join by another
// session during the login, or an ADD_GROUP whose answer was lost and that
// is retried (errno 7). A group the user is not in (or whose position
// cannot be read now) is dropped; its messages wait for the next login.
func (n *Node) followGroups(ctx context.Context, s *Session, gen uint32, uid codec.UserID, gids []codec.GroupID) {
	groups, err := n.store.UserGroups(ctx, uid)
	if err != nil {
		n.log.Warn("reading the user's groups", "user", uid, "err", err)
	}
	acked := make([]codec.Seq, len(groups))
	for i, g := range groups {
		acked[i] = min(max(g.Acked, n.pendingAck(AckKey{User: uid, Group: g.ID})), g.Last)
	}
	var pumps []codec.GroupID
	s.mu.Lock()
	if s.gen != gen || s.uid != uid {
		s.mu.Unlock()
		return
	}
	for _, gid := range gids {
		i := slices.IndexFunc(groups, func(g Group) bool { return g.ID == gid })
		if i < 0 {
			delete(s.groups, gid)
			continue
		}
		if s.setGroupLocked(gid, acked[i], groups[i].Last) {
			pumps = append(pumps, gid)
		}
	}
	s.mu.Unlock()
	n.startPumps(s, gen, pumps)
}

// loginAck builds a successful LOGIN_ACK for uid and returns the user's
// groups with the user's position in each, the user's acknowledged seq,
// after which its offline messages start, and whether the offline messages
// are the whole inbox backlog stored when it was read. It lists the
// members of the groups listGroups picks only, and asks presence for those
// and the friends only, each once.
func (n *Node) loginAck(ctx context.Context, uid codec.UserID, u User) (ack *codec.LoginAck, groups []Group, acked codec.Seq, complete bool, err error) {
	friends, err := n.store.Friends(ctx, uid)
	if err != nil {
		return nil, nil, 0, false, err
	}
	// ADD_FRIEND keeps friends within MaxFriends; a user who has more
	// (from before the cap, or a lower cap) sees the first ones, by id.
	friends = friends[:min(len(friends), n.cfg.MaxFriends)]
	groups, err = n.store.UserGroups(ctx, uid)
	if err != nil {
		return nil, nil, 0, false, err
	}
	last, acked, err := n.store.InboxState(ctx, uid)
	if err != nil {
		return nil, nil, 0, false, err
	}
	var members map[codec.GroupID][]Member
	if listed := n.listGroups(groups); len(listed) > 0 {
		if members, err = n.store.GroupMembersOf(ctx, listed); err != nil {
			return nil, nil, 0, false, err
		}
	}
	// A DELIVERED of an earlier session on this node may not be flushed yet.
	acked = max(acked, n.pendingAck(AckKey{User: uid}))
	for i := range groups {
		g := &groups[i]
		g.Acked = min(max(g.Acked, n.pendingAck(AckKey{User: uid, Group: g.ID})), g.Last)
	}
	var offline []codec.Delivery
	complete = last <= acked // nothing unacknowledged: no read
	if !complete {
		if offline, err = n.store.Inbox(ctx, uid, acked, n.cfg.OfflineCap); err != nil {
			return nil, nil, 0, false, err
		}
		complete = len(offline) < n.cfg.OfflineCap
	}
	// Keep the LOGIN_ACK frame modest; what is cut follows at once. Each
	// message counts as encoded: escapes make a message up to 6 times its
	// length.
	size := 0
	for i := range offline {
		if size += codec.DeliveryLen(&offline[i]) + 1; size > maxOfflineBytes && i > 0 {
			offline, complete = offline[:i], false
			break
		}
	}
	ids := make([]codec.UserID, 0, len(friends))
	for _, f := range friends {
		ids = append(ids, f.ID)
	}
	for _, g := range groups {
		for _, m := range members[g.ID] {
			ids = append(ids, m.ID)
		}
	}
	state, err := n.presence(ctx, uid, ids)
	if err != nil {
		return nil, nil, 0, false, err
	}
	ack = &codec.LoginAck{
		MsgID: codec.MsgLoginAck, ErrMsg: "ok", ID: uid, Name: u.Name,
		Token: n.tokens.issue(uid, u.TokenVersion, n.cfg.Now()),
		Node:  n.cfg.NodeName, MaxFrame: n.cfg.MaxFrame,
		Friends: make([]codec.Friend, 0, len(friends)), Groups: make([]codec.Group, 0, len(groups)),
		OfflineMsg: offline,
	}
	if ack.OfflineMsg == nil {
		ack.OfflineMsg = []codec.Delivery{}
	}
	for _, f := range friends {
		ack.Friends = append(ack.Friends, codec.Friend{ID: f.ID, Name: f.Name, State: state(f.ID)})
	}
	for _, g := range groups {
		cg := codec.Group{ID: g.ID, Name: g.Name, Desc: g.Desc, Size: g.Size, Users: []codec.GroupUser{}}
		if ms, ok := members[g.ID]; ok {
			cg.Size = len(ms) // read after the size: joins since count
			cg.Users = make([]codec.GroupUser, 0, len(ms))
			for _, m := range ms {
				cg.Users = append(cg.Users, codec.GroupUser{ID: m.ID, Name: m.Name, State: state(m.ID), Role: m.Role})
			}
		}
		ack.Groups = append(ack.Groups, cg)
	}
	return ack, groups, acked, complete, nil
}

// presence asks the bus, in one call, whether each of ids is online
// (each asked once, and uid, the user asking, not at all: it is online),
// and returns each one's state.
func (n *Node) presence(ctx context.Context, uid codec.UserID, ids []codec.UserID) (func(codec.UserID) string, error) {
	ask := make([]codec.UserID, 0, len(ids))
	seen := make(map[codec.UserID]struct{}, len(ids))
	for _, id := range ids {
		if _, ok := seen[id]; !ok && id != uid {
			seen[id] = struct{}{}
			ask = append(ask, id)
		}
	}
	online := map[codec.UserID]bool{}
	if len(ask) > 0 {
		var err error
		if online, err = n.bus.Online(ctx, ask); err != nil {
			return nil, err
		}
	}
	return func(id codec.UserID) string {
		if online[id] || id == uid {
			return codec.StateOnline
		}
		return codec.StateOffline
	}, nil
}

// listGroups returns the groups (of groups, in id order) whose members
// LOGIN_ACK lists: each group of at most LoginGroupUsers members, in id
// order, while the members listed stay within LoginUsers in all (a group
// that does not fit what is left is skipped, a smaller one after it may
// still be listed).
func (n *Node) listGroups(groups []Group) []codec.GroupID {
	var out []codec.GroupID
	left := n.cfg.LoginUsers
	for _, g := range groups {
		if g.Size <= n.cfg.LoginGroupUsers && g.Size <= left {
			out = append(out, g.ID)
			left -= g.Size
		}
	}
	return out
}

// fitLoginAck encodes ack within MaxLoginAck bytes, a frame the server
// sends without closing the connection as a slow consumer. A bigger one
// goes without the groups' member lists (their sizes stay), then also
// without its offline messages, which then follow it as deliveries
// (complete turns false); when even that is too big it returns errno 11,
// and logs it. It returns the frame and complete.
func (n *Node) fitLoginAck(ack *codec.LoginAck, complete bool) ([]byte, bool, *reqError) {
	frame := codec.MustMarshal(ack)
	if len(frame) <= n.cfg.MaxLoginAck {
		return frame, complete, nil
	}
	full := len(frame)
	for i := range ack.Groups {
		ack.Groups[i].Users = []codec.GroupUser{}
	}
	if frame = codec.MustMarshal(ack); len(frame) > n.cfg.MaxLoginAck && len(ack.OfflineMsg) > 0 {
		ack.OfflineMsg, complete = []codec.Delivery{}, false
		frame = codec.MustMarshal(ack)
	}
	attrs := []any{"user", ack.ID, "bytes", full, "max", n.cfg.MaxLoginAck,
		"friends", len(ack.Friends), "groups", len(ack.Groups)}
	if len(frame) > n.cfg.MaxLoginAck {
		n.log.Warn("login refused: LOGIN_ACK too large even without member lists and offline messages", append(attrs, "smallest", len(frame))...)
		return nil, complete, fail(codec.ErrnoLimit, "login answer would be %d bytes, more than the %d allowed: too many friends or groups", len(frame), n.cfg.MaxLoginAck)
	}
	n.log.Warn("LOGIN_ACK too large: sent without member lists", append(attrs, "sent", len(frame), "offline_dropped", !complete)...)
	return frame, complete, nil
}

// unbind undoes a login (sid, generation gen) that could not complete.
func (n *Node) unbind(s *Session, uid codec.UserID, sid string, gen uint32) {
	n.endLogin(s, gen)
	n.leave(uid, sid, s)
}

// endLogin ends s's login if it is still the generation gen.
func (n *Node) endLogin(s *Session, gen uint32) {
	s.mu.Lock()
	if s.gen == gen {
		s.endLoginLocked()
	}
	s.mu.Unlock()
}

// kick ends a session replaced by a newer login of the same user.
func (n *Node) kick(old *Session) {
	old.mu.Lock()
	ended := old.kickLocked()
	old.mu.Unlock()
	if ended {
		old.t.Close()
	}
}

func (n *Node) logout(ctx context.Context, s *Session, uid codec.UserID) *reqError {
	if err := n.store.BumpTokenVersion(ctx, uid); err != nil {
		return n.storeFail("logout", err)
	}
	s.mu.Lock()
	sid := s.id.String()
	s.endLoginLocked()
	s.mu.Unlock()
	n.leave(uid, sid, s)
	return nil
}

func (n *Node) messageText(req *codec.Request) (string, *reqError) {
	msg, rerr := requireString(req.Msg, "msg")
	if rerr != nil {
		return "", rerr
	}
	if msg == "" || len(msg) > n.cfg.MaxMessageLen {
		return "", fail(codec.ErrnoBadRequest, "msg must be 1..%d bytes", n.cfg.MaxMessageLen)
	}
	blank := true
	for _, r := range msg {
		if !unicode.IsSpace(r) {
			blank = false
			break
		}
	}
	if blank {
		return "", fail(codec.ErrnoBadRequest, "msg must not be blank")
	}
	return msg, nil
}

// userExists checks that uid is a user: a session on this node proves it
// (users are never deleted), then the name cache, then the store
// (ErrNotFound when there is no such user), unless cachedOnly
// (errWouldBlock).
func (n *Node) userExists(ctx context.Context, uid codec.UserID, cachedOnly bool) error {
	if n.hub.get(uid) != nil {
		return nil
	}
	if _, ok := n.names.get(uid); ok {
		return nil
	}
	if cachedOnly {
		return errWouldBlock
	}
	u, err := n.store.User(ctx, uid)
	if err != nil {
		return err
	}
	n.names.put(uid, u.Name)
	return nil
}

// sendAsync queues a validated chat message for the group commit; its ACK
// is written when the commit is done, after the ACKs of earlier sends of
// the same session. ctx (the request's) bounds the wait for room in the
// commit queue.
func (n *Node) sendAsync(ctx context.Context, s *Session, req *codec.Request, sr SendRequest) {
	sr.UnixMilli = n.cfg.Now().UnixMilli()
	cost := sendCost(sr)
	n.startSend(s, cost)
	n.store.SendAsync(ctx, sr, n.sent(s, req, sr, cost))
}

// trySendAsync is sendAsync when the commit queue has room; false, having
// queued nothing, when it has none.
func (n *Node) trySendAsync(s *Session, req *codec.Request, sr SendRequest) bool {
	sr.UnixMilli = n.cfg.Now().UnixMilli()
	cost := sendCost(sr)
	n.startSend(s, cost)
	if n.store.TrySendAsync(sr, n.sent(s, req, sr, cost)) {
		return true
	}
	n.endSend(s, cost)
	return false
}

// roomToSend reports whether s may queue sr for the commit now: when none
// of its sends waits for its commit, or when what those that wait and sr
// hold stays within MaxSending (sendCost). The pending limits count a
// request only until it is queued here, and what a send holds until its
// commit grows with its recipients (a group send holds a row and an entry
// for each); past this bound the request waits for the connection's
// earlier sends, and the connection's later requests wait as pending
// (errno 8 past those limits).
func (n *Node) roomToSend(s *Session, sr SendRequest) bool {
	held := s.sendingHeld.Load()
	return held == 0 || held+sendCost(sr) <= int64(n.cfg.MaxSending)
}

// sendCost is what sr is counted to hold until its commit: its text and
// SendRecipientCost for each recipient.
func sendCost(sr SendRequest) int64 {
	return int64(len(sr.Body)) + SendRecipientCost*int64(len(sr.To))
}

// startSend counts a send that waits for its commit, holding cost.
func (n *Node) startSend(s *Session, cost int64) {
	s.sends.Add(1)
	s.sendingHeld.Add(cost)
	n.sending.Add(1)
}

// endSend uncounts a send counted by startSend.
func (n *Node) endSend(s *Session, cost int64) {
	s.sendingHeld.Add(-cost)
	s.sends.Done()
	n.sending.Add(-1)
}

// sent returns the completion of a send counted by startSend (holding
// cost): it writes the send's ACK.
func (n *Node) sent(s *Session, req *codec.Request, sr SendRequest, cost int64) func(SendResult, error) {
	reqID, msgID, gid := req.ReqID, req.MsgID, sr.Group
	return func(res SendResult, err error) {
		defer n.endSend(s, cost)
		if err != nil {
			rerr := n.storeFail("send", err)
			s.send(&codec.Ack{MsgID: codec.MsgAck, ReqID: reqID, Ack: msgID, Errno: rerr.errno, ErrMsg: rerr.msg})
			return
		}
		s.send(&codec.Ack{MsgID: codec.MsgAck, ReqID: reqID, Ack: msgID, ErrMsg: "ok", GroupID: gid,
			Time: codec.FormatTime(time.UnixMilli(res.UnixMilli)), GSeq: res.GSeq})
	}
}

// Busy reports whether chat sends are still waiting for their commit.
func (n *Node) Busy() bool { return n.sending.Load() > 0 }

// clientMsgID validates the request's clientmsgid into sr.
func clientMsgID(req *codec.Request, sr *SendRequest) *reqError {
	cmid, err := req.ClientMsgIDString()
	if err != nil {
		return fail(codec.ErrnoBadRequest, "%s", err.Error())
	}
	sr.ClientMsgID = cmid
	return nil
}

// oneChat validates a one-to-one chat message into a SendRequest. With
// cachedOnly it reads nothing from the store: wouldBlock if it must.
func (n *Node) oneChat(ctx context.Context, req *codec.Request, uid codec.UserID, name string, cachedOnly bool) (SendRequest, *reqError) {
	to, rerr := requireID(req.ToID, "toid")
	if rerr != nil {
		return SendRequest{}, rerr
	}
	msg, rerr := n.messageText(req)
	if rerr != nil {
		return SendRequest{}, rerr
	}
	if err := n.userExists(ctx, codec.UserID(to), cachedOnly); err != nil {
		switch {
		case errors.Is(err, errWouldBlock):
			return SendRequest{}, wouldBlock
		case errors.Is(err, ErrNotFound):
			return SendRequest{}, fail(codec.ErrnoNotFound, "no user %d", to)
		}
		return SendRequest{}, n.storeFail("chat", err)
	}
	toID := codec.UserID(to)
	sr := SendRequest{From: uid, FromName: name, To: []codec.UserID{toID}, ToUser: toID, Body: msg}
	return sr, clientMsgID(req, &sr)
}

// groupChat validates a group chat message into a SendRequest. With
// cachedOnly it reads nothing from the store: wouldBlock if it must.
func (n *Node) groupChat(ctx context.Context, req *codec.Request, uid codec.UserID, name string, cachedOnly bool) (SendRequest, *reqError) {
	gid, rerr := requireID(req.GroupID, "groupid")
	if rerr != nil {
		return SendRequest{}, rerr
	}
	msg, rerr := n.messageText(req)
	if rerr != nil {
		return SendRequest{}, rerr
	}
	ids, err := n.groupMembers(ctx, codec.GroupID(gid), uid, cachedOnly)
	if errors.Is(err, errWouldBlock) {
		return SendRequest{}, wouldBlock
	}
	if errors.Is(err, ErrNotFound) {
		return SendRequest{}, fail(codec.ErrnoNotFound, "no group %d", gid)
	}
	if err != nil {
		return SendRequest{}, n.storeFail("group chat", err)
	}
	to := make([]codec.UserID, 0, len(ids))
	member := false
	for _, id := range ids {
		if id == uid {
			member = true
		} else {
			to = append(to, id)
		}
	}
	if !member {
		return SendRequest{}, fail(codec.ErrnoForbidden, "not a member of group %d", gid)
	}
	sr := SendRequest{From: uid, FromName: name, To: to, Group: codec.GroupID(gid), Body: msg}
	return sr, clientMsgID(req, &sr)
}

func (n *Node) addFriend(ctx context.Context, req *codec.Request, uid codec.UserID) *reqError {
	fid, rerr := requireID(req.FriendID, "friendid")
	if rerr != nil {
		return rerr
	}
	if codec.UserID(fid) == uid {
		return fail(codec.ErrnoBadRequest, "cannot add yourself as a friend")
	}
	err := n.store.AddFriend(ctx, uid, codec.UserID(fid), n.cfg.MaxFriends)
	switch {
	case errors.Is(err, ErrNotFound):
		return fail(codec.ErrnoNotFound, "no user %d", fid)
	case errors.Is(err, ErrConflict):
		return fail(codec.ErrnoConflict, "already friends with %d", fid)
	case err != nil: // ErrLimit too
		return n.storeFail("add friend", err)
	}
	return nil
}

func (n *Node) createGroup(ctx context.Context, s *Session, req *codec.Request, uid codec.UserID, ack *codec.Ack) *reqError {
	name, rerr := requireString(req.GroupName, "groupname")
	if rerr != nil {
		return rerr
	}
	if err := validName(name); err != nil {
		return fail(codec.ErrnoBadRequest, "groupname %s", err)
	}
	desc := ""
	if req.GroupDesc != nil {
		desc = *req.GroupDesc
	}
	if len([]rune(desc)) > MaxGroupDesc {
		return fail(codec.ErrnoBadRequest, "groupdesc must be at most %d characters", MaxGroupDesc)
	}
	gid, err := n.store.CreateGroup(ctx, uid, name, desc, n.cfg.MaxGroups)
	if errors.Is(err, ErrConflict) {
		return fail(codec.ErrnoConflict, "group name %q is taken", name)
	}
	if err != nil { // ErrLimit too
		return n.storeFail("create group", err)
	}
	ack.GroupID = gid
	s.mu.Lock()
	if s.uid == uid {
		s.setGroupLocked(gid, 0, 0) // a new log
	}
	s.mu.Unlock()
	// A message from a member who joined at once may have been offered
	// before the session followed the group: read the log once.
	if gen, start, _ := s.claimStreams(gid); start {
		go n.pump(s, gen)
	}
	return nil
}

// groupMembers returns the member ids of gid for a send by sender, from
// the cache when it holds the sender. Members never leave a group, so a
// cached list lacks at most members who joined since: a list without the
// sender (who may just have joined) is read again, and members missing
// from a message's recipients are found after its commit (groupEntries).
// With cachedOnly it returns errWouldBlock instead of reading the store.
func (n *Node) groupMembers(ctx context.Context, gid codec.GroupID, sender codec.UserID, cachedOnly bool) ([]codec.UserID, error) {
	if ids, ok := n.members.get(gid); ok && slices.Contains(ids, sender) {
		return ids, nil
	}
	if cachedOnly {
		return nil, errWouldBlock
	}
	return n.loadMembers(ctx, gid)
}

// loadMembers reads the member ids of gid and caches them; ErrNotFound
// when there is no such group.
func (n *Node) loadMembers(ctx context.Context, gid codec.GroupID) ([]codec.UserID, error) {
	members, err := n.store.GroupMembers(ctx, gid)
	if err != nil {
		return nil, err
	}
	ids := make([]codec.UserID, len(members))
	for i, m := range members {
		ids[i] = m.ID
	}
	n.members.put(gid, ids)
	return ids, nil
}

// addGroup joins the user to a group. The session follows the group's
// log from before the join is stored (held back), so a message committed
// right after it is not missed, and from the join's position on.
func (n *Node) addGroup(ctx context.Context, s *Session, req *codec.Request, uid codec.UserID) *reqError {
	raw, rerr := requireID(req.GroupID, "groupid")
	if rerr != nil {
		return rerr
	}
	gid := codec.GroupID(raw)
	s.mu.Lock()
	_, had := s.groups[gid]
	gen := s.gen
	if s.uid == uid {
		s.holdGroupLocked(gid)
	}
	s.mu.Unlock()
	start, err := n.store.JoinGroup(ctx, gid, uid, n.cfg.MaxGroups, n.cfg.MaxGroupMembers)
	s.mu.Lock()
	pump, follow := false, false
	if s.gen == gen && s.uid == uid {
		switch {
		case err == nil:
			pump = s.setGroupLocked(gid, start, start)
		case !had && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrLimit):
			// Already a member (a retried join whose answer was lost), or
			// the join's outcome is unknown: follow from the stored
			// position, if any.
			follow = true
		case !had:
			delete(s.groups, gid)
		}
	}
	s.mu.Unlock()
	if pump {
		n.startPumps(s, gen, []codec.GroupID{gid})
	}
	if follow {
		n.followGroups(ctx, s, gen, uid, []codec.GroupID{gid})
	}
	switch {
	case errors.Is(err, ErrNotFound):
		return fail(codec.ErrnoNotFound, "no group %d", gid)
	case errors.Is(err, ErrConflict):
		return fail(codec.ErrnoConflict, "already a member of group %d", gid)
	case err != nil: // ErrLimit too
		return n.storeFail("join group", err)
	}
	return nil
}

// groupUsers answers GROUP_USERS: a page of a group's members, for a
// member of the group, with each one's presence.
func (n *Node) groupUsers(ctx context.Context, s *Session, req *codec.Request, uid codec.UserID) *reqError {
	gid, rerr := requireID(req.GroupID, "groupid")
	if rerr != nil {
		return rerr
	}
	var after codec.UserID
	if req.After != nil {
		if *req.After < 0 {
			return fail(codec.ErrnoBadRequest, "field \"after\" must not be negative")
		}
		after = codec.UserID(*req.After)
	}
	limit := codec.MaxGroupUsersPage
	if req.Limit != nil {
		if *req.Limit <= 0 {
			return fail(codec.ErrnoBadRequest, "field \"limit\" must be a positive integer")
		}
		limit = int(min(*req.Limit, codec.MaxGroupUsersPage))
	}
	// One more than the page, to tell whether there are more.
	ms, err := n.store.GroupUsers(ctx, codec.GroupID(gid), uid, after, limit+1)
	switch {
	case errors.Is(err, ErrNotFound):
		return fail(codec.ErrnoNotFound, "no group %d", gid)
	case errors.Is(err, ErrNotMember):
		return fail(codec.ErrnoForbidden, "not a member of group %d", gid)
	case err != nil:
		return n.storeFail("group users", err)
	}
	more := len(ms) > limit
	ms = ms[:min(len(ms), limit)]
	ids := make([]codec.UserID, len(ms))
	for i, m := range ms {
		ids[i] = m.ID
	}
	state, err := n.presence(ctx, uid, ids)
	if err != nil {
		return n.storeFail("group users", fmt.Errorf("%w: presence: %v", ErrUnavailable, err))
	}
	ack := &codec.GroupUsersAck{MsgID: codec.MsgGroupUsersAck, ReqID: req.ReqID, ErrMsg: "ok", GroupID: codec.GroupID(gid),
		Users: make([]codec.GroupUser, 0, len(ms)), More: more}
	for _, m := range ms {
		ack.Users = append(ack.Users, codec.GroupUser{ID: m.ID, Name: m.Name, State: state(m.ID), Role: m.Role})
	}
	s.send(ack)
	return nil
}

// delivered records a cumulative DELIVERED of the inbox ("seq") and/or of
// a group's log ("groupid" and "gseq"). A position beyond what this
// session was sent is clamped: a client cannot acknowledge what it never
// got.
func (n *Node) delivered(s *Session, req *codec.Request, uid codec.UserID) *reqError {
	if err := checkDelivered(req); err != nil {
		return err
	}
	n.ackDelivered(s, req, uid)
	return nil
}

// checkDelivered validates a DELIVERED request.
func checkDelivered(req *codec.Request) *reqError {
	if req.Seq == nil && req.GSeq == nil {
		return fail(codec.ErrnoBadRequest, "missing field \"seq\" (or \"groupid\" and \"gseq\")")
	}
	if req.GSeq != nil && req.GroupID == nil {
		return fail(codec.ErrnoBadRequest, "missing field \"groupid\" (\"gseq\" acknowledges a group's messages)")
	}
	return nil
}

// ackDelivered queues the acknowledgements of a valid DELIVERED request.
func (n *Node) ackDelivered(s *Session, req *codec.Request, uid codec.UserID) {
	var seq, gseq codec.Seq
	var gid codec.GroupID
	s.mu.Lock()
	if req.Seq != nil {
		seq = min(codec.Seq(*req.Seq), s.inbox.sent)
	}
	if req.GSeq != nil {
		gid = codec.GroupID(*req.GroupID)
		if st := s.groups[gid]; st != nil {
			gseq = min(codec.Seq(*req.GSeq), st.sent)
		}
	}
	s.mu.Unlock()
	if seq > 0 {
		n.queueAck(AckKey{User: uid}, seq)
	}
	if gseq > 0 {
		n.queueAck(AckKey{User: uid, Group: gid}, gseq)
	}
}

// Refuse answers a request of s without handling it (rate limited), after
// the responses to its earlier requests.
func (n *Node) Refuse(s *Session, body []byte, errno codec.Errno, msg string) {
	s.sends.Wait()
	s.t.Send(RejectRequest(body, errno, msg))
}

// RejectRequest answers a request the server refused before handling it
// (rate limited), echoing its msgid and reqid when the body parses.
func RejectRequest(body []byte, errno codec.Errno, msg string) []byte {
	req, _ := codec.ParseRequest(body)
	return codec.MustMarshal(&codec.Ack{MsgID: codec.MsgAck, ReqID: req.ReqID, Ack: req.MsgID, Errno: errno, ErrMsg: msg})
}
