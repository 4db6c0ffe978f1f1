package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/chatcluster/chatcluster/codec"
)

// ANSI styles, used only when the stream is a terminal.
const (
	ansiReset   = "\x1b[0m"
	ansiBold    = "\x1b[1m"
	ansiDim     = "\x1b[2m"
	ansiRed     = "\x1b[31m"
	ansiGreen   = "\x1b[32m"
	ansiYellow  = "\x1b[33m"
	ansiMagenta = "\x1b[35m"
	ansiCyan    = "\x1b[36m"
)

// printer writes whole lines to stdout and stderr, one at a time, from any
// goroutine. Results and messages go to stdout; errors and connection
// notices to stderr. In interactive mode the writers are readline's, which
// redraw the prompt and the half-typed line below each printed line.
type printer struct {
	mu       sync.Mutex
	out, err io.Writer
	color    bool // stdout is a terminal and colour is wanted
	errColor bool // the same for stderr
}

func paint(on bool, style, s string) string {
	if !on || s == "" {
		return s
	}
	return style + s + ansiReset
}

func (p *printer) write(w io.Writer, s string) {
	if !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	_, _ = io.WriteString(w, s)
}

// Print writes text (one or more lines) to stdout.
func (p *printer) Print(s string) { p.write(p.out, s) }

// Printf formats one line to stdout.
func (p *printer) Printf(format string, args ...any) { p.Print(fmt.Sprintf(format, args...)) }

// OK writes a success line to stdout.
func (p *printer) OK(s string) { p.Print(paint(p.color, ansiGreen, s)) }

// Error writes an error line to stderr.
func (p *printer) Error(s string) { p.write(p.err, paint(p.errColor, ansiRed, s)) }

// Notice writes a connection-state line to stderr.
func (p *printer) Notice(s string) { p.write(p.err, paint(p.errColor, ansiYellow, s)) }

// Delivery prints one received message in the original ChatClient's format:
//
//	2024-01-01 10:00:00 [2]zhang san said: hello
//	group [1] 2024-01-01 10:00:00 [2]zhang san said: hello
func (p *printer) Delivery(d codec.Delivery) {
	p.Print(formatDelivery(d, p.color))
}

func formatDelivery(d codec.Delivery, color bool) string {
	var b strings.Builder
	if d.MsgID == codec.MsgGroupChat || d.GroupID != 0 {
		b.WriteString(paint(color, ansiMagenta, "group ["+strconv.FormatInt(int64(d.GroupID), 10)+"]"))
		b.WriteByte(' ')
	}
	b.WriteString(paint(color, ansiDim, sanitize(d.Time)))
	b.WriteByte(' ')
	b.WriteString(paint(color, ansiBold+ansiCyan, "["+strconv.FormatInt(int64(d.ID), 10)+"]"+sanitize(d.Name)))
	b.WriteString(" said: ")
	b.WriteString(sanitize(d.Msg))
	return b.String()
}

// formatState colours a presence state.
func formatState(state string, color bool) string {
	switch state {
	case codec.StateOnline:
		return paint(color, ansiGreen, state)
	case codec.StateOffline:
		return paint(color, ansiDim, state)
	}
	return sanitize(state)
}

// friendEntry is a friend as the client knows it; Added marks one added in
// this session, whose name and state the server has not told us yet.
type friendEntry struct {
	codec.Friend
	Added bool
}

// groupEntry is a group as the client knows it; Joined marks one joined in
// this session, whose details come with the next login.
type groupEntry struct {
	codec.Group
	Joined bool
}

const (
	ruleLogin   = "======================login user======================"
	ruleFriends = "----------------------friend list---------------------"
	ruleGroups  = "----------------------group list----------------------"
	ruleEnd     = "======================================================"
)

func formatFriends(friends []friendEntry, color bool) string {
	var b strings.Builder
	b.WriteString(ruleFriends + "\n")
	if len(friends) == 0 {
		b.WriteString("(no friends yet; addfriend:friendid)\n")
	}
	for _, f := range friends {
		if f.Added {
			fmt.Fprintf(&b, "%d (added this session)\n", f.ID)
			continue
		}
		fmt.Fprintf(&b, "%d %s %s\n", f.ID, sanitize(f.Name), formatState(f.State, color))
	}
	return b.String()
}

func formatGroups(groups []groupEntry, color bool) string {
	var b strings.Builder
	b.WriteString(ruleGroups + "\n")
	if len(groups) == 0 {
		b.WriteString("(no groups yet; creategroup:groupname:groupdesc or addgroup:groupid)\n")
	}
	for _, g := range groups {
		if g.Joined {
			fmt.Fprintf(&b, "%d (joined this session)\n", g.ID)
			continue
		}
		fmt.Fprintf(&b, "%d %s %s\n", g.ID, sanitize(g.Name), sanitize(g.Desc))
		for _, u := range g.Users {
			fmt.Fprintf(&b, "    %d %s %s %s\n", u.ID, sanitize(u.Name), formatState(u.State, color), sanitize(u.Role))
		}
		if len(g.Users) < g.Size { // too big for LOGIN_ACK to list
			fmt.Fprintf(&b, "    (%d members; members:%d lists them)\n", g.Size, g.ID)
		}
	}
	return b.String()
}

// formatMembers is what members prints: the group's members, one a line,
// as groups prints them, and their number.
func formatMembers(gid codec.GroupID, users []codec.GroupUser, color bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "group %d: %d members\n", gid, len(users))
	for _, u := range users {
		fmt.Fprintf(&b, "    %d %s %s %s\n", u.ID, sanitize(u.Name), formatState(u.State, color), sanitize(u.Role))
	}
	return b.String()
}

// formatUser is what login prints: the user, friends and groups, as the
// original showCurrentUserData did.
func formatUser(id codec.UserID, name string, friends []friendEntry, groups []groupEntry, color bool) string {
	var b strings.Builder
	b.WriteString(ruleLogin + "\n")
	fmt.Fprintf(&b, "current login user => id:%d name:%s\n", id, paint(color, ansiBold, sanitize(name)))
	b.WriteString(formatFriends(friends, color))
	b.WriteString(formatGroups(groups, color))
	b.WriteString(ruleEnd + "\n")
	return b.String()
}

// asOf is the note under friends and groups: the lists and states are
// from the last login (or reconnect), as the protocol sends no updates
// (what this session added itself is marked so).
func asOf(t time.Time) string {
	return "(as of your login at " + t.Format("15:04:05") + "; log in again to refresh)"
}

// sanitize makes text from the network safe to print on one line: control
// characters (newlines, escape sequences) and the bidirectional controls
// (which could make a message show text that is not where it seems, or
// reorder the name before it) are shown escaped, not obeyed.
func sanitize(s string) string {
	if strings.IndexFunc(s, unsafeRune) < 0 {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if !unsafeRune(r) {
			b.WriteRune(r)
			continue
		}
		q := strconv.QuoteRuneToASCII(r) // e.g. '\n', '\x1b' or '\u202e'
		b.WriteString(q[1 : len(q)-1])
	}
	return b.String()
}

// unsafeRune reports whether r must not reach the terminal as it is.
func unsafeRune(r rune) bool {
	return unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r)
}
