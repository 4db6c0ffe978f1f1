package codec

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// UserID identifies a user; ids are assigned by SIGNUP and start at 1.
type UserID int64

// GroupID identifies a group; ids are assigned by CREATE_GROUP and start at 1.
type GroupID int64

// Seq is a position in one user's inbox, or in one group's log: 1, 2, 3,
// ... without gaps.
type Seq int64

// MsgID is the "msgid" of a message: what kind of message it is.
type MsgID int

// Message numbers. 1 to 10 are the original project's, 11 and up are new.
const (
	MsgLogin       MsgID = 1
	MsgLoginAck    MsgID = 2
	MsgLogout      MsgID = 3 // LOGINOUT
	MsgSignup      MsgID = 4
	MsgSignupAck   MsgID = 5
	MsgOneChat     MsgID = 6
	MsgAddFriend   MsgID = 7
	MsgCreateGroup MsgID = 8
	MsgAddGroup    MsgID = 9
	MsgGroupChat   MsgID = 10
	MsgAck         MsgID = 11
	MsgDelivered   MsgID = 12
	MsgPing        MsgID = 13
	MsgPong        MsgID = 14
	MsgKicked      MsgID = 15
	// MsgGroupUsers (GROUP_USERS) asks for one page of a group's members,
	// answered by MsgGroupUsersAck.
	MsgGroupUsers    MsgID = 16
	MsgGroupUsersAck MsgID = 17
)

// MaxGroupUsersPage is the most members one GROUP_USERS answer lists (and
// its "limit" when the request has none).
const MaxGroupUsersPage = 1000

// Errno is the error code carried in responses.
type Errno int

// Error codes. 2 is unused, as in the original project.
const (
	OK                 Errno = 0
	ErrnoAuth          Errno = 1  // wrong id, password or token
	ErrnoBadRequest    Errno = 3  // malformed JSON, missing or mistyped field, unknown msgid
	ErrnoNotLoggedIn   Errno = 4  // request needs a logged-in session
	ErrnoNotFound      Errno = 5  // no such user or group
	ErrnoForbidden     Errno = 6  // e.g. not a member of the group
	ErrnoConflict      Errno = 7  // name taken, already friends, already a member
	ErrnoRateLimited   Errno = 8  // too many requests on this connection
	ErrnoFrameTooLarge Errno = 9  // frame length above the server's maximum
	ErrnoUnavailable   Errno = 10 // store or bus unavailable; retry later
	ErrnoLimit         Errno = 11 // a limit was reached (friends, groups, members, LOGIN_ACK size)
)

var errnoText = map[Errno]string{
	OK:                 "ok",
	ErrnoAuth:          "wrong id, password or token",
	ErrnoBadRequest:    "bad request",
	ErrnoNotLoggedIn:   "not logged in",
	ErrnoNotFound:      "not found",
	ErrnoForbidden:     "forbidden",
	ErrnoConflict:      "conflict",
	ErrnoRateLimited:   "rate limited",
	ErrnoFrameTooLarge: "frame too large",
	ErrnoUnavailable:   "server unavailable, retry later",
	ErrnoLimit:         "limit reached",
}

// String returns a short human-readable description of e.
func (e Errno) String() string {
	if s, ok := errnoText[e]; ok {
		return s
	}
	return "errno " + strconv.Itoa(int(e))
}

// TimeLayout is the layout of every "time" field.
const TimeLayout = "2006-01-02 15:04:05"

// FormatTime formats t as a protocol time string in t's location.
func FormatTime(t time.Time) string { return t.Format(TimeLayout) }

// Request is any client-to-server message. Pointer fields are nil when the
// field is absent, so handlers can tell missing from zero.
type Request struct {
	MsgID       MsgID           `json:"msgid"`
	ReqID       json.RawMessage `json:"reqid,omitempty"`
	ID          *int64          `json:"id,omitempty"`
	Password    *string         `json:"password,omitempty"`
	Token       *string         `json:"token,omitempty"`
	Name        *string         `json:"name,omitempty"`
	ToID        *int64          `json:"toid,omitempty"`
	Msg         *string         `json:"msg,omitempty"`
	ClientMsgID json.RawMessage `json:"clientmsgid,omitempty"`
	FriendID    *int64          `json:"friendid,omitempty"`
	GroupName   *string         `json:"groupname,omitempty"`
	GroupDesc   *string         `json:"groupdesc,omitempty"`
	GroupID     *int64          `json:"groupid,omitempty"`
	Seq         *int64          `json:"seq,omitempty"`
	GSeq        *int64          `json:"gseq,omitempty"`
	After       *int64          `json:"after,omitempty"` // GROUP_USERS: list members with ids above it
	Limit       *int64          `json:"limit,omitempty"` // GROUP_USERS: most members to list
}

// BadRequestError describes why a frame is not a valid request.
type BadRequestError struct{ Reason string }

func (e *BadRequestError) Error() string { return "bad request: " + e.Reason }

func badRequest(format string, args ...any) error {
	return &BadRequestError{Reason: fmt.Sprintf(format, args...)}
}

// MaxClientMsgIDLen bounds the length of a clientmsgid.
const MaxClientMsgIDLen = 64

// ParseRequest decodes one frame body. On a *BadRequestError the returned
// Request still carries whatever msgid and reqid could be read, so the error
// response can echo them. Only a JSON object with an integer msgid, valid
// UTF-8 and correctly typed fields is accepted; unknown fields are ignored.
func ParseRequest(body []byte) (*Request, error) {
	req := &Request{}
	if !utf8.Valid(body) {
		// Read what can be read, to answer in the request's own form.
		_ = json.Unmarshal(exactKeys(body), req)
		*req = Request{MsgID: req.MsgID, ReqID: req.ReqID}
		if !validReqID(req.ReqID) || !utf8.Valid(req.ReqID) {
			req.ReqID = nil
		}
		return req, badRequest("frame is not valid UTF-8")
	}
	if parseFast(body, req) {
		return req, nil // its reqid is a number or a string
	}
	err := json.Unmarshal(exactKeys(body), req)
	if !validReqID(req.ReqID) {
		req.ReqID = nil
		if err == nil {
			return req, badRequest("reqid must be a number or a string")
		}
	}
	if err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return req, badRequest("field %q has the wrong type (want %s)", te.Field, jsonKind(te.Type))
		}
		if errors.As(err, &te) {
			return req, badRequest("frame must be a JSON object")
		}
		return req, badRequest("malformed JSON")
	}
	return req, nil
}

// exactKeys returns body without the members whose key matches one of
// Request's only when case is ignored ("MSG", "ſeq"): encoding/json would
// take them for the field, and the protocol's keys are exact, so they are
// unknown keys, ignored. The other members are kept as they are, in order,
// so the request reads as it would without the dropped ones (duplicate
// keys and all). It returns body itself when there are none, or when body
// is not a JSON object it can read (json.Unmarshal then explains what is
// wrong).
func exactKeys(body []byte) []byte {
	dropped := false
	if !members(body, func(key, _ []byte) { dropped = dropped || folds(key) }) || !dropped || !json.Valid(body) {
		return body // members skips values without checking them
	}
	out := append(make([]byte, 0, len(body)), '{')
	members(body, func(key, member []byte) {
		if !folds(key) {
			if len(out) > 1 {
				out = append(out, ',')
			}
			out = append(out, member...)
		}
	})
	return append(out, '}')
}

// members calls fn with each member of the JSON object body, in order: its
// key, unescaped, and its bytes from the key to the end of the value. It
// reports false when body is not an object it can read. The values are
// skipped, not checked (json.Unmarshal does that).
func members(body []byte, fn func(key, member []byte)) bool {
	p := fastParser{b: body}
	p.ws()
	if !p.eat('{') {
		return false
	}
	p.ws()
	if p.eat('}') {
		return true
	}
	for {
		start := p.i
		key, ok := p.key()
		if !ok {
			return false
		}
		p.ws()
		if !p.eat(':') || !p.skipValue() {
			return false
		}
		fn(key, body[start:p.i])
		p.ws()
		if p.eat(',') {
			p.ws()
			continue
		}
		return p.eat('}')
	}
}

// folds reports whether key differs from one of Request's keys only in
// case.
func folds(key []byte) bool {
	for _, c := range key {
		if c >= 'A' && c <= 'Z' || c >= utf8.RuneSelf { // else no fold of a lower-case key
			return foldsToKey(string(key))
		}
	}
	return false
}

// foldsToKey reports whether k is one of Request's keys only when case is
// ignored.
func foldsToKey(k string) bool {
	for _, key := range requestKeys {
		if k != key && strings.EqualFold(k, key) {
			return true
		}
	}
	return false
}

// jsonKind names a Go type the way a JSON client thinks of it.
func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.String:
		return "a string"
	case reflect.Pointer:
		return jsonKind(t.Elem())
	}
	return "another type"
}

func validReqID(raw json.RawMessage) bool {
	if len(raw) == 0 {
		return true
	}
	switch c := raw[0]; {
	case c == '"':
		return true
	case c == '-' || (c >= '0' && c <= '9'):
		return true
	}
	return false
}

// ClientMsgIDString returns the request's clientmsgid normalised to a string,
// "" when absent. A clientmsgid must be a non-empty string of at most
// MaxClientMsgIDLen bytes or an integer.
func (r *Request) ClientMsgIDString() (string, error) {
	raw := r.ClientMsgID
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", badRequest("clientmsgid is malformed")
		}
		if s == "" || len(s) > MaxClientMsgIDLen {
			return "", badRequest("clientmsgid must be 1..%d bytes", MaxClientMsgIDLen)
		}
		return "s:" + s, nil
	}
	var n int64
	if err := json.Unmarshal(raw, &n); err != nil {
		return "", badRequest("clientmsgid must be a string or an integer")
	}
	return "n:" + strconv.FormatInt(n, 10), nil
}

// Ack is the ACK (11) response.
type Ack struct {
	MsgID   MsgID           `json:"msgid"`
	ReqID   json.RawMessage `json:"reqid,omitempty"`
	Ack     MsgID           `json:"ack"`
	Errno   Errno           `json:"errno"`
	ErrMsg  string          `json:"errmsg"`
	GroupID GroupID         `json:"groupid,omitempty"`
	Time    string          `json:"time,omitempty"`
	// GSeq is a new GROUP_CHAT message's position in the group's log (0
	// for a retried clientmsgid).
	GSeq Seq `json:"gseq,omitempty"`
}

// ErrorResponse is a LOGIN_ACK, SIGNUP_ACK or GROUP_USERS_ACK that reports
// a failure.
type ErrorResponse struct {
	MsgID  MsgID           `json:"msgid"`
	ReqID  json.RawMessage `json:"reqid,omitempty"`
	Errno  Errno           `json:"errno"`
	ErrMsg string          `json:"errmsg"`
}

// SignupAck is the SIGNUP_ACK (5) response to a successful signup.
type SignupAck struct {
	MsgID  MsgID           `json:"msgid"`
	ReqID  json.RawMessage `json:"reqid,omitempty"`
	Errno  Errno           `json:"errno"`
	ErrMsg string          `json:"errmsg"`
	ID     UserID          `json:"id"`
}

// Friend is one entry of LOGIN_ACK.friends.
type Friend struct {
	ID    UserID `json:"id"`
	Name  string `json:"name"`
	State string `json:"state"` // "online" or "offline"
}

// GroupUser is one member in LOGIN_ACK.groups[].users and in
// GROUP_USERS_ACK.users.
type GroupUser struct {
	ID    UserID `json:"id"`
	Name  string `json:"name"`
	State string `json:"state"`
	Role  string `json:"role"` // "creator" or "normal"
}

// Group is one entry of LOGIN_ACK.groups. Size is the group's number of
// members. Users lists them all, or is empty when the group is too big to
// list in LOGIN_ACK (len(Users) < Size): GROUP_USERS pages through them.
type Group struct {
	ID    GroupID     `json:"id"`
	Name  string      `json:"groupname"`
	Desc  string      `json:"groupdesc"`
	Size  int         `json:"size"`
	Users []GroupUser `json:"users"`
}

// GroupUsersAck is the GROUP_USERS_ACK (17) response to a successful
// GROUP_USERS: up to the request's limit members of the group with ids
// above its "after", in id order; More is true when there are members
// after the last one listed.
type GroupUsersAck struct {
	MsgID   MsgID           `json:"msgid"`
	ReqID   json.RawMessage `json:"reqid,omitempty"`
	Errno   Errno           `json:"errno"`
	ErrMsg  string          `json:"errmsg"`
	GroupID GroupID         `json:"groupid"`
	Users   []GroupUser     `json:"users"`
	More    bool            `json:"more"`
}

// Presence states.
const (
	StateOnline  = "online"
	StateOffline = "offline"
)

// Group roles.
const (
	RoleCreator = "creator"
	RoleNormal  = "normal"
)

// LoginAck is the LOGIN_ACK (2) response to a successful login.
type LoginAck struct {
	MsgID      MsgID           `json:"msgid"`
	ReqID      json.RawMessage `json:"reqid,omitempty"`
	Errno      Errno           `json:"errno"`
	ErrMsg     string          `json:"errmsg"`
	ID         UserID          `json:"id"`
	Name       string          `json:"name"`
	Token      string          `json:"token"`
	Node       string          `json:"node,omitempty"`     // the session's node (-node-id); omitted if none
	MaxFrame   int             `json:"maxframe,omitempty"` // the largest request frame body the server accepts
	Friends    []Friend        `json:"friends"`
	Groups     []Group         `json:"groups"`
	OfflineMsg []Delivery      `json:"offlineMsg"`
}

// Delivery is a message delivered to its recipient: ONE_CHAT (6) with ToID
// set, or GROUP_CHAT (10) with GroupID set. ID and Name are the sender's.
//
// A delivery is numbered in exactly one stream: Seq (> 0) is its position
// in the recipient's own inbox (one-to-one messages, and group messages
// stored before group logs existed); GSeq (> 0) is its position in group
// GroupID's log, the same for every member.
type Delivery struct {
	MsgID   MsgID   `json:"msgid"`
	ID      UserID  `json:"id"`
	Name    string  `json:"name"`
	ToID    UserID  `json:"toid,omitempty"`
	GroupID GroupID `json:"groupid,omitempty"`
	Msg     string  `json:"msg"`
	Time    string  `json:"time"`
	Seq     Seq     `json:"seq,omitempty"`
	GSeq    Seq     `json:"gseq,omitempty"`

	// frame is the encoded frame, set by Encode; a pointer, so that
	// Delivery stays comparable.
	frame *[]byte
}

// Encode stores d's encoded frame in d, so that AppendFrameOf on d and on
// copies of d made afterwards reuses it: a group message goes to every
// member as the same bytes. d must not be changed afterwards.
func (d *Delivery) Encode() {
	b := MustMarshal(d)
	d.frame = &b
}

// AppendFrameOf appends d's frame to out: the one stored by Encode, else a
// fresh encoding. When out is empty and d was encoded, it returns the
// stored frame itself, shared by every copy of d, so a group message's
// members are not each given a copy: the caller must not write into the
// result, nor reslice it to reuse as a buffer (it is capped, so that
// appending to it copies).
func AppendFrameOf(out []byte, d *Delivery) []byte {
	if d.frame != nil {
		if len(out) == 0 {
			f := *d.frame
			return f[:len(f):len(f)]
		}
		return append(out, *d.frame...)
	}
	return appendDeliveryFrame(out, d)
}

// Pong is the PONG (14) response.
type Pong struct {
	MsgID MsgID           `json:"msgid"`
	ReqID json.RawMessage `json:"reqid,omitempty"`
}

// Kicked is the KICKED (15) notice sent before a replaced session is closed.
type Kicked struct {
	MsgID  MsgID  `json:"msgid"`
	ErrMsg string `json:"errmsg"`
}

// Header is the part every server-to-client message shares; clients decode
// it first to dispatch.
type Header struct {
	MsgID MsgID           `json:"msgid"`
	ReqID json.RawMessage `json:"reqid,omitempty"`
	Seq   Seq             `json:"seq,omitempty"`
}

// Marshal encodes v as JSON and wraps it in a frame. It does not escape
// <, > and & (encoding/json's HTML escaping), so strings and a request's
// reqid come back as they were sent. ACKs and deliveries (*Ack, *Delivery:
// what the service sends) take a faster path with the same output
// (encode.go).
func Marshal(v any) ([]byte, error) {
	switch m := v.(type) {
	case *Ack:
		if m == nil {
			break
		}
		if b, ok := appendAckFrame(make([]byte, 0, ackSize(m)), m); ok {
			return b, nil
		}
	case *Delivery:
		if m == nil {
			break
		}
		return appendDeliveryFrame(make([]byte, 0, deliverySize(m)), m), nil
	}
	b := bytes.NewBuffer(make([]byte, HeaderLen, HeaderLen+256))
	enc := json.NewEncoder(b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	frame := b.Bytes()
	frame = frame[:len(frame)-1] // Encode's newline
	binary.BigEndian.PutUint32(frame, uint32(len(frame)-HeaderLen))
	return frame, nil
}

// MustMarshal is Marshal for values that always encode (the structs above).
func MustMarshal(v any) []byte {
	b, err := Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
