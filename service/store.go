package service

import (
	"context"
	"errors"
	"fmt"

	"github.com/chatcluster/chatcluster/codec"
)

// Errors a Store returns; handlers map them to errnos. Any other error from a
// Store is treated as the store being unavailable (errno 10).
var (
	// ErrNotFound: no such user or group.
	ErrNotFound = errors.New("not found")
	// ErrConflict: a unique name is taken, or the row already exists.
	ErrConflict = errors.New("conflict")
	// ErrUnavailable: the store (or bus) cannot serve the request now.
	ErrUnavailable = errors.New("unavailable")
	// ErrNotMember: the user is not a member of the group.
	ErrNotMember = errors.New("not a member")
	// ErrLimit: a cap was reached; the error is a *LimitError, which says
	// which.
	ErrLimit = errors.New("limit reached")
)

// LimitKind names a cap a Store enforces where it writes.
type LimitKind int

// The caps.
const (
	LimitFriends LimitKind = iota + 1 // friends per user
	LimitGroups                       // groups a user belongs to
	LimitMembers                      // members per group
)

// LimitError reports a cap that a write would have exceeded; it matches
// ErrLimit (errors.Is). Values are immutable once returned.
type LimitError struct {
	Kind LimitKind
	// ID is the user (LimitFriends, LimitGroups) or the group
	// (LimitMembers) at the cap.
	ID int64
	// Count is how many it has (at least Max), Max the cap.
	Count, Max int
}

// Error names the cap, as clients read it in errmsg.
func (e *LimitError) Error() string {
	what := "user %d has %d friends"
	switch e.Kind {
	case LimitGroups:
		what = "user %d is in %d groups"
	case LimitMembers:
		what = "group %d has %d members"
	}
	what = fmt.Sprintf(what, e.ID, e.Count)
	if e.Count > e.Max {
		return fmt.Sprintf("%s, more than the %d allowed", what, e.Max)
	}
	return what + ", the most allowed"
}

// Unwrap makes errors.Is(err, ErrLimit) true.
func (e *LimitError) Unwrap() error { return ErrLimit }

// User is a stored user.
type User struct {
	ID           codec.UserID
	Name         string
	PasswordHash []byte
	TokenVersion int64 // bumped by LOGINOUT; tokens of older versions are revoked
}

// Member is a user in a group.
type Member struct {
	ID   codec.UserID
	Name string
	Role string // codec.RoleCreator or codec.RoleNormal
}

// Group is a stored group the user UserGroups was called for belongs to.
type Group struct {
	ID   codec.GroupID
	Name string
	Desc string
	// Size is the group's number of members.
	Size int
	// Last is the last gseq of the group's log, and Acked the highest gseq
	// the user UserGroups was called for has acknowledged (or the log's
	// last gseq when the user joined): everything in between is that
	// member's backlog.
	Last, Acked codec.Seq
}

// AckKey names one delivery stream of a user: the user's inbox (Group 0) or
// a group's log.
type AckKey struct {
	User  codec.UserID
	Group codec.GroupID
}

// SendRequest is one chat message to store: to one user (Group == 0) or to
// every recipient of a group.
type SendRequest struct {
	From        codec.UserID
	FromName    string
	To          []codec.UserID // recipients; for a group, every member but the sender
	ToUser      codec.UserID   // one-to-one: the addressee (== To[0])
	Group       codec.GroupID  // group chat: the group
	Body        string
	ClientMsgID string // "" when the client sent none
	UnixMilli   int64  // server time of the send
}

// SendResult is the outcome of a stored send.
type SendResult struct {
	// UnixMilli is the stored time of the message; for a retried
	// clientmsgid it is the original's.
	UnixMilli int64
	// Duplicate is true when the clientmsgid was seen before and nothing
	// new was stored.
	Duplicate bool
	// GSeq is a new group message's position in the group's log.
	GSeq codec.Seq
}

// Entry is one committed delivery to user To: an inbox entry (Delivery.Seq)
// or a group log entry (Delivery.GSeq). A group message yields one entry
// per recipient and one for its sender (Delivery.ID == To), whose session
// only moves past it.
type Entry struct {
	To       codec.UserID
	Delivery codec.Delivery
}

// Store is everything the services need from persistence. Implementations
// must be safe for concurrent use.
type Store interface {
	// CreateUser stores a new user; ErrConflict when the name is taken.
	CreateUser(ctx context.Context, name string, hash []byte) (codec.UserID, error)
	// User loads one user; ErrNotFound when there is none.
	User(ctx context.Context, id codec.UserID) (User, error)
	// BumpTokenVersion revokes every token issued to the user so far.
	BumpTokenVersion(ctx context.Context, id codec.UserID) error
	// AddFriend makes a and b friends of each other; ErrNotFound when b does
	// not exist, ErrConflict when they already are, a *LimitError
	// (LimitFriends) when either already has maxFriends friends (0: no
	// cap). Concurrent calls cannot exceed the cap.
	AddFriend(ctx context.Context, a, b codec.UserID, maxFriends int) error
	// Friends lists the user's friends.
	Friends(ctx context.Context, id codec.UserID) ([]Member, error)
	// CreateGroup creates a group with creator as its first member;
	// ErrConflict when the name is taken, a *LimitError (LimitGroups) when
	// the creator is in maxGroups groups already (0: no cap).
	CreateGroup(ctx context.Context, creator codec.UserID, name, desc string, maxGroups int) (codec.GroupID, error)
	// JoinGroup adds the user to the group and returns the group log's last
	// gseq at that moment: the member receives what comes after it.
	// ErrNotFound when the group does not exist, ErrConflict when the user
	// is already a member, a *LimitError when the user is in maxGroups
	// groups already (LimitGroups) or the group has maxMembers members
	// (LimitMembers); 0: no cap. Concurrent calls cannot exceed the caps.
	JoinGroup(ctx context.Context, gid codec.GroupID, uid codec.UserID, maxGroups, maxMembers int) (codec.Seq, error)
	// GroupMembers lists a group's members; ErrNotFound when there is no
	// such group.
	GroupMembers(ctx context.Context, gid codec.GroupID) ([]Member, error)
	// GroupSizes returns the number of members of each of the groups (a
	// group that does not exist is absent).
	GroupSizes(ctx context.Context, gids []codec.GroupID) (map[codec.GroupID]int, error)
	// UserGroups lists the groups the user belongs to, in id order, with
	// their sizes and the user's position in each group's log; it reads no
	// member lists.
	UserGroups(ctx context.Context, uid codec.UserID) ([]Group, error)
	// GroupMembersOf lists the members of each of gids, in join order (a
	// group that does not exist is absent). Concurrent calls are batched,
	// and the lists may be shared between callers: do not change them.
	GroupMembersOf(ctx context.Context, gids []codec.GroupID) (map[codec.GroupID][]Member, error)
	// GroupUsers returns up to limit members of the group with ids above
	// after, in id order, when member is one of them: ErrNotFound when the
	// group does not exist, ErrNotMember when member is not in it.
	GroupUsers(ctx context.Context, gid codec.GroupID, member, after codec.UserID, limit int) ([]Member, error)
	// Send stores a message durably and returns once it is committed: a
	// one-to-one message in the recipient's inbox at its next seq, a group
	// message once, in the group's log at its next gseq. Concurrent calls are
	// committed together (group commit); the entries of each commit are
	// passed to the commit hook, in seq order per recipient, before the Send
	// calls of that commit return.
	Send(ctx context.Context, req SendRequest) (SendResult, error)
	// SendAsync is Send without waiting: done runs exactly once, with the
	// outcome, on the store's post-commit goroutine (so it must not block), in
	// the order the SendAsync calls with the same sender (From) were made.
	// SendAsync itself blocks only while the commit queue is full.
	SendAsync(ctx context.Context, req SendRequest, done func(SendResult, error))
	// TrySendAsync is SendAsync when the commit queue has room: it never
	// blocks, and reports whether it queued the send. When it did not (the
	// queue is full, or the store closed), done is never called.
	TrySendAsync(req SendRequest, done func(SendResult, error)) bool
	// SetCommitHook sets the function that receives committed entries. Call
	// it once, before the first Send; fn must not block.
	SetCommitHook(fn func([]Entry))
	// Inbox returns up to limit entries of the user's inbox with seq > after,
	// in seq order.
	Inbox(ctx context.Context, uid codec.UserID, after codec.Seq, limit int) ([]codec.Delivery, error)
	// GroupLog returns up to limit entries of the group's log with gseq >
	// after, in gseq order.
	GroupLog(ctx context.Context, gid codec.GroupID, after codec.Seq, limit int) ([]codec.Delivery, error)
	// InboxState returns the user's last assigned seq and last acknowledged seq.
	InboxState(ctx context.Context, uid codec.UserID) (last, acked codec.Seq, err error)
	// Ack records, for each stream in acks, that every delivery with seq
	// (inbox) or gseq (group log) <= the given one was received. It never
	// lowers an acknowledged position.
	Ack(ctx context.Context, acks map[AckKey]codec.Seq) error
	// Secret returns the cluster-wide token signing key, creating it once.
	Secret(ctx context.Context) ([]byte, error)
}
