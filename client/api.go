package client

import (
	"context"
	"strconv"

	"github.com/chatcluster/chatcluster/codec"
)

// Wire forms of the requests the typed helpers send. Every field is always
// present (no omitempty) except clientmsgid, so the server sees exactly what
// the caller passed.
type (
	loginReq struct {
		MsgID    codec.MsgID  `json:"msgid"`
		ReqID    uint64       `json:"reqid"`
		ID       codec.UserID `json:"id"`
		Password string       `json:"password"`
	}
	loginTokenReq struct {
		MsgID codec.MsgID  `json:"msgid"`
		ReqID uint64       `json:"reqid"`
		ID    codec.UserID `json:"id"`
		Token string       `json:"token"`
	}
	signupReq struct {
		MsgID    codec.MsgID `json:"msgid"`
		ReqID    uint64      `json:"reqid"`
		Name     string      `json:"name"`
		Password string      `json:"password"`
	}
	bareReq struct { // LOGINOUT, PING
		MsgID codec.MsgID `json:"msgid"`
		ReqID uint64      `json:"reqid"`
	}
	chatReq struct {
		MsgID       codec.MsgID  `json:"msgid"`
		ReqID       uint64       `json:"reqid"`
		ToID        codec.UserID `json:"toid"`
		Msg         string       `json:"msg"`
		ClientMsgID string       `json:"clientmsgid,omitempty"`
	}
	groupChatReq struct {
		MsgID       codec.MsgID   `json:"msgid"`
		ReqID       uint64        `json:"reqid"`
		GroupID     codec.GroupID `json:"groupid"`
		Msg         string        `json:"msg"`
		ClientMsgID string        `json:"clientmsgid,omitempty"`
	}
	addFriendReq struct {
		MsgID    codec.MsgID  `json:"msgid"`
		ReqID    uint64       `json:"reqid"`
		FriendID codec.UserID `json:"friendid"`
	}
	createGroupReq struct {
		MsgID     codec.MsgID `json:"msgid"`
		ReqID     uint64      `json:"reqid"`
		GroupName string      `json:"groupname"`
		GroupDesc string      `json:"groupdesc"`
	}
	addGroupReq struct {
		MsgID   codec.MsgID   `json:"msgid"`
		ReqID   uint64        `json:"reqid"`
		GroupID codec.GroupID `json:"groupid"`
	}
	groupUsersReq struct {
		MsgID   codec.MsgID   `json:"msgid"`
		ReqID   uint64        `json:"reqid"`
		GroupID codec.GroupID `json:"groupid"`
		After   codec.UserID  `json:"after"`
		Limit   int           `json:"limit,omitempty"` // 0: the server's page size
	}
)

// call sends v (whose reqid must be id), waits for the response, turns a
// non-zero errno into a *ServerError and checks the response type.
func (c *Client) call(ctx context.Context, id uint64, reqMsg, want codec.MsgID, v any) (Response, error) {
	body, err := marshal(v)
	if err != nil {
		return Response{}, err
	}
	r, err := c.roundTrip(ctx, id, body)
	if err != nil {
		return Response{}, err
	}
	if err := r.Err(reqMsg); err != nil {
		return r, err
	}
	if r.Header.MsgID != want || (want == codec.MsgAck && r.Ack != reqMsg) {
		return r, protocolErrorf("msgid %d answered by msgid %d (ack %d)", reqMsg, r.Header.MsgID, r.Ack)
	}
	return r, nil
}

// callAck is call for requests answered by ACK; it decodes the ACK.
func (c *Client) callAck(ctx context.Context, id uint64, reqMsg codec.MsgID, v any) (*codec.Ack, error) {
	r, err := c.call(ctx, id, reqMsg, codec.MsgAck, v)
	if err != nil {
		return nil, err
	}
	ack := new(codec.Ack)
	if err := r.Decode(ack); err != nil {
		return nil, protocolErrorf("bad ACK: %v", err)
	}
	return ack, nil
}

// Signup registers a new user and returns its id. Safe for concurrent use.
func (c *Client) Signup(ctx context.Context, name, password string) (codec.UserID, error) {
	id := c.nextReqID.Add(1)
	r, err := c.call(ctx, id, codec.MsgSignup, codec.MsgSignupAck,
		signupReq{MsgID: codec.MsgSignup, ReqID: id, Name: name, Password: password})
	if err != nil {
		return 0, err
	}
	var ack codec.SignupAck
	if err := r.Decode(&ack); err != nil {
		return 0, protocolErrorf("bad SIGNUP_ACK: %v", err)
	}
	return ack.ID, nil
}

// Login logs in with a password. On success the LOGIN_ACK's offline messages
// are already queued on Deliveries (deduplicated) when it returns; the
// returned LoginAck still lists them all in OfflineMsg. Safe for concurrent
// use, though logging in twice on one connection is the server's business.
func (c *Client) Login(ctx context.Context, id codec.UserID, password string) (*codec.LoginAck, error) {
	rid := c.nextReqID.Add(1)
	return c.login(ctx, rid, loginReq{MsgID: codec.MsgLogin, ReqID: rid, ID: id, Password: password})
}

// LoginToken logs in with the token from an earlier LoginAck; otherwise it
// is the same as Login. Safe for concurrent use.
func (c *Client) LoginToken(ctx context.Context, id codec.UserID, token string) (*codec.LoginAck, error) {
	rid := c.nextReqID.Add(1)
	return c.login(ctx, rid, loginTokenReq{MsgID: codec.MsgLogin, ReqID: rid, ID: id, Token: token})
}

func (c *Client) login(ctx context.Context, rid uint64, v any) (*codec.LoginAck, error) {
	r, err := c.call(ctx, rid, codec.MsgLogin, codec.MsgLoginAck, v)
	if err != nil {
		return nil, err
	}
	ack := new(codec.LoginAck)
	if err := r.Decode(ack); err != nil {
		return nil, protocolErrorf("bad LOGIN_ACK: %v", err)
	}
	return ack, nil
}

// Logout sends LOGINOUT and waits for its ACK; the connection stays open.
// Safe for concurrent use.
func (c *Client) Logout(ctx context.Context) error {
	id := c.nextReqID.Add(1)
	_, err := c.call(ctx, id, codec.MsgLogout, codec.MsgAck, bareReq{MsgID: codec.MsgLogout, ReqID: id})
	return err
}

// Ping sends PING and waits for PONG. Safe for concurrent use.
func (c *Client) Ping(ctx context.Context) error {
	id := c.nextReqID.Add(1)
	_, err := c.call(ctx, id, codec.MsgPing, codec.MsgPong, bareReq{MsgID: codec.MsgPing, ReqID: id})
	return err
}

// NewClientMsgID returns a clientmsgid unique to this Client (a random
// per-client prefix and a counter), for use with ChatWithID and
// GroupChatWithID when a send may have to be retried. Safe for concurrent
// use.
func (c *Client) NewClientMsgID() string {
	return c.msgPrefix + strconv.FormatUint(c.msgCount.Add(1), 10)
}

// Chat sends a one-to-one message with a fresh clientmsgid and returns the
// server's ACK (its Time is the message's timestamp). Safe for concurrent
// use.
func (c *Client) Chat(ctx context.Context, to codec.UserID, msg string) (*codec.Ack, error) {
	return c.ChatWithID(ctx, to, msg, c.NewClientMsgID())
}

// ChatWithID is Chat with a caller-chosen clientmsgid: resending with the
// same clientmsgid after an error lets the server drop the duplicate. An
// empty clientmsgid sends none. Safe for concurrent use.
func (c *Client) ChatWithID(ctx context.Context, to codec.UserID, msg, clientmsgid string) (*codec.Ack, error) {
	id := c.nextReqID.Add(1)
	return c.callAck(ctx, id, codec.MsgOneChat,
		chatReq{MsgID: codec.MsgOneChat, ReqID: id, ToID: to, Msg: msg, ClientMsgID: clientmsgid})
}

// GroupChat sends a message to a group with a fresh clientmsgid and returns
// the server's ACK: its Time is the message's timestamp and its GSeq the
// message's position in the group's log (0 when the server recognised a
// retried clientmsgid). The sender does not receive its own message. Safe
// for concurrent use.
func (c *Client) GroupChat(ctx context.Context, gid codec.GroupID, msg string) (*codec.Ack, error) {
	return c.GroupChatWithID(ctx, gid, msg, c.NewClientMsgID())
}

// GroupChatWithID is GroupChat with a caller-chosen clientmsgid (see
// ChatWithID). Safe for concurrent use.
func (c *Client) GroupChatWithID(ctx context.Context, gid codec.GroupID, msg, clientmsgid string) (*codec.Ack, error) {
	id := c.nextReqID.Add(1)
	return c.callAck(ctx, id, codec.MsgGroupChat,
		groupChatReq{MsgID: codec.MsgGroupChat, ReqID: id, GroupID: gid, Msg: msg, ClientMsgID: clientmsgid})
}

// AddFriend adds user friend as a friend. Safe for concurrent use.
func (c *Client) AddFriend(ctx context.Context, friend codec.UserID) error {
	id := c.nextReqID.Add(1)
	_, err := c.callAck(ctx, id, codec.MsgAddFriend,
		addFriendReq{MsgID: codec.MsgAddFriend, ReqID: id, FriendID: friend})
	return err
}

// CreateGroup creates a group (the caller becomes its creator) and returns
// its id. Safe for concurrent use.
func (c *Client) CreateGroup(ctx context.Context, name, desc string) (codec.GroupID, error) {
	id := c.nextReqID.Add(1)
	ack, err := c.callAck(ctx, id, codec.MsgCreateGroup,
		createGroupReq{MsgID: codec.MsgCreateGroup, ReqID: id, GroupName: name, GroupDesc: desc})
	if err != nil {
		return 0, err
	}
	return ack.GroupID, nil
}

// AddGroup joins group gid. Safe for concurrent use.
func (c *Client) AddGroup(ctx context.Context, gid codec.GroupID) error {
	id := c.nextReqID.Add(1)
	_, err := c.callAck(ctx, id, codec.MsgAddGroup,
		addGroupReq{MsgID: codec.MsgAddGroup, ReqID: id, GroupID: gid})
	return err
}

// GroupUsers returns one page of group gid's members: up to limit of them
// (0 or more than codec.MaxGroupUsersPage: that many) with ids above
// after, in id order, each with its name, role and online state, and
// whether more follow; pass the last id as after for the next page. Only
// members may ask (errors.Is(err, ErrForbidden) otherwise). LOGIN_ACK
// lists the members of small groups only; this lists any. Safe for
// concurrent use.
func (c *Client) GroupUsers(ctx context.Context, gid codec.GroupID, after codec.UserID, limit int) (users []codec.GroupUser, more bool, err error) {
	id := c.nextReqID.Add(1)
	r, err := c.call(ctx, id, codec.MsgGroupUsers, codec.MsgGroupUsersAck,
		groupUsersReq{MsgID: codec.MsgGroupUsers, ReqID: id, GroupID: gid, After: after, Limit: max(limit, 0)})
	if err != nil {
		return nil, false, err
	}
	var ack codec.GroupUsersAck
	if err := r.Decode(&ack); err != nil {
		return nil, false, protocolErrorf("bad GROUP_USERS_ACK: %v", err)
	}
	return ack.Users, ack.More, nil
}
