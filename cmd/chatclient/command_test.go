package main

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chatcluster/chatcluster/client"
	"github.com/chatcluster/chatcluster/codec"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		line string
		want Command
	}{
		{"help", Command{Kind: CmdHelp, Name: "help"}},
		{"  HELP \r\n", Command{Kind: CmdHelp, Name: "help"}},
		{"chat:2:hello", Command{Kind: CmdChat, Name: "chat", UserID: 2, Text: "hello"}},
		{"chat: 2 :time is 10:30: ok ", Command{Kind: CmdChat, Name: "chat", UserID: 2, Text: "time is 10:30: ok "}},
		{"addfriend:7", Command{Kind: CmdAddFriend, Name: "addfriend", UserID: 7, GroupID: 7}},
		{"creategroup:go fans:all: about Go", Command{Kind: CmdCreateGroup, Name: "creategroup", Group: "go fans", Desc: "all: about Go"}},
		{"creategroup:solo", Command{Kind: CmdCreateGroup, Name: "creategroup", Group: "solo"}},
		{"addgroup:3", Command{Kind: CmdAddGroup, Name: "addgroup", UserID: 3, GroupID: 3}},
		{"groupchat:3:hi all", Command{Kind: CmdGroupChat, Name: "groupchat", GroupID: 3, Text: "hi all"}},
		{"loginout", Command{Kind: CmdLogout, Name: "loginout"}},
		{"logout", Command{Kind: CmdLogout, Name: "loginout"}},
		{"friends", Command{Kind: CmdFriends, Name: "friends"}},
		{"groups", Command{Kind: CmdGroups, Name: "groups"}},
		{"members: 12", Command{Kind: CmdMembers, Name: "members", UserID: 12, GroupID: 12}},
		{"quit", Command{Kind: CmdQuit, Name: "quit"}},
		{"exit", Command{Kind: CmdQuit, Name: "quit"}},
		{"login:5:pa:ss", Command{Kind: CmdLogin, Name: "login", UserID: 5, Password: "pa:ss"}},
		{"signup:zhang san:secret", Command{Kind: CmdSignup, Name: "signup", UserName: "zhang san", Password: "secret"}},
		{"register:li si:secret", Command{Kind: CmdSignup, Name: "signup", UserName: "li si", Password: "secret"}},
	} {
		got, err := Parse(tc.line)
		if err != nil || got != tc.want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", tc.line, got, err, tc.want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ line, want string }{
		{"bogus", `unknown command "bogus"; type help`},
		{"chat 2 hi", `unknown command "chat 2 hi"; type help`},
		{"x\x1b[2J:1", `unknown command "x\x1b[2J"; type help`},
		{"chat", "chat: usage: chat:friendid:message"},
		{"chat:2", "chat: usage: chat:friendid:message"},
		{"chat:abc:hi", "chat: friend id must be a positive number"},
		{"chat:0:hi", "chat: friend id must be a positive number"},
		{"chat:-3:hi", "chat: friend id must be a positive number"},
		{"chat:+3:hi", "chat: friend id must be a positive number"},
		{"chat:99999999999999999999:hi", "chat: friend id must be a positive number"},
		{"chat:2:", "chat: message is empty"},
		{"chat:2:   ", "chat: message is empty"},
		{"groupchat:x:hi", "groupchat: group id must be a positive number"},
		{"groupchat:1:", "groupchat: message is empty"},
		{"addfriend", "addfriend: usage: addfriend:friendid"},
		{"addfriend:me", "addfriend: friend id must be a positive number"},
		{"addgroup:1.5", "addgroup: group id must be a positive number"},
		{"members", "members: usage: members:groupid"},
		{"members:all", "members: group id must be a positive number"},
		{"creategroup", "creategroup: usage: creategroup:groupname:groupdesc"},
		{"creategroup: :desc", "creategroup: group name is empty"},
		{"help:me", "help: takes no arguments"},
		{"loginout:now", "loginout: takes no arguments"},
		{"login:x:pw", "login: user id must be a positive number"},
		{"login:1", "login: password is empty"},
		{"signup::pw", "signup: user name is empty"},
		{"signup:bob:", "signup: password is empty"},
	} {
		_, err := Parse(tc.line)
		if err == nil || err.Error() != tc.want {
			t.Errorf("Parse(%q) error = %v; want %q", tc.line, err, tc.want)
		}
	}
	for _, line := range []string{"", "   ", "\r\n", "# a comment", "  # chat:1:x"} {
		if _, err := Parse(line); !errors.Is(err, errEmpty) {
			t.Errorf("Parse(%q) error = %v; want errEmpty", line, err)
		}
	}
}

func TestFriendlyErrors(t *testing.T) {
	se := func(e codec.Errno, msg string) error {
		return fmt.Errorf("wrapped: %w", &client.ServerError{Ack: codec.MsgOneChat, Errno: e, ErrMsg: msg})
	}
	for _, tc := range []struct {
		err  error
		want string
	}{
		{se(codec.ErrnoAuth, "wrong id, password or token"), "wrong id or password"},
		{se(codec.ErrnoBadRequest, "msg must be 1..4096 bytes"), "bad request: msg must be 1..4096 bytes"},
		{se(codec.ErrnoNotLoggedIn, "log in first"), "not logged in"},
		{se(codec.ErrnoNotFound, "no user 9"), "no such user or group (no user 9)"},
		{se(codec.ErrnoNotFound, ""), "no such user or group"},
		{se(codec.ErrnoForbidden, "not a member of group 2"), "not allowed: you are not a member (not a member of group 2)"},
		{se(codec.ErrnoConflict, "already friends with 2"), "already exists: already friends with 2"},
		{se(codec.ErrnoRateLimited, "too many requests"), "slow down: rate limited"},
		{se(codec.ErrnoFrameTooLarge, "frame too large"), "message too large"},
		{se(codec.ErrnoUnavailable, "send: server unavailable, retry later"), "server unavailable, try again"},
		{se(codec.ErrnoLimit, "user 7 has 5000 friends, the most allowed"), "limit reached: user 7 has 5000 friends, the most allowed"},
		{se(42, "what\nnow"), `server error 42: what\nnow`},
		{fmt.Errorf("%w: logged in elsewhere", client.ErrKicked), "logged in elsewhere; session closed"},
		{io.EOF, "connection lost"},
		{client.ErrClosed, "connection lost"},
		{&net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, "connection lost"},
		{errConnLost, errConnLost.Error()},
		{fmt.Errorf("x: %w", errEnded), "x: session closed"},
	} {
		if got := friendly(tc.err); got != tc.want {
			t.Errorf("friendly(%v) = %q; want %q", tc.err, got, tc.want)
		}
	}
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	if got, want := dialError("127.0.0.1:1", refused), "cannot connect to 127.0.0.1:1: connection refused"; got != want {
		t.Errorf("dialError = %q; want %q", got, want)
	}
}

func TestFormatDelivery(t *testing.T) {
	one := codec.Delivery{MsgID: codec.MsgOneChat, ID: 2, Name: "zhang san", ToID: 1, Msg: "hello", Time: "2024-01-01 10:00:00", Seq: 1}
	if got, want := formatDelivery(one, false), "2024-01-01 10:00:00 [2]zhang san said: hello"; got != want {
		t.Errorf("one-to-one: %q; want %q", got, want)
	}
	group := codec.Delivery{MsgID: codec.MsgGroupChat, ID: 2, Name: "zhang san", GroupID: 3, Msg: "hi\x1b[2J\nall", Time: "2024-01-01 10:00:00", Seq: 2}
	if got, want := formatDelivery(group, false), `group [3] 2024-01-01 10:00:00 [2]zhang san said: hi\x1b[2J\nall`; got != want {
		t.Errorf("group: %q; want %q", got, want)
	}
	// Bidirectional controls are shown, not obeyed: "\u202e" would show
	// what follows it right to left; other scripts print as they are.
	bidi := codec.Delivery{MsgID: codec.MsgOneChat, ID: 2, Name: "eve\u202e", ToID: 1, Msg: "pay \u2066abc\u2069 ok, 你好", Time: "2024-01-01 10:00:00", Seq: 3}
	if got, want := formatDelivery(bidi, false), `2024-01-01 10:00:00 [2]eve\u202e said: pay \u2066abc\u2069 ok, 你好`; got != want {
		t.Errorf("bidi controls: %q; want %q", got, want)
	}
	// A group message numbered in its group's log prints the same.
	logged := group
	logged.Seq, logged.GSeq = 0, 9
	if got, want := formatDelivery(logged, false), formatDelivery(group, false); got != want {
		t.Errorf("group with gseq: %q; want %q", got, want)
	}
	if got := formatDelivery(one, true); !strings.Contains(got, "\x1b[") || stripANSI(got) != formatDelivery(one, false) {
		t.Errorf("coloured: %q", got)
	}
}

func TestParseArgs(t *testing.T) {
	noEnv := func(string) string { return "" }
	o, err := parseArgs([]string{"-u", "3", "-p", "pw", "-c", "chat:1:a;b", "-c", "friends", "-wait", "2s", "10.0.0.1:7000"}, noEnv, io.Discard)
	if err != nil || o.user != 3 || o.password != "pw" || o.addr != "10.0.0.1:7000" || o.wait != 2*time.Second ||
		len(o.commands) != 2 || o.commands[0] != "chat:1:a;b" {
		t.Fatalf("parseArgs = %+v, %v", o, err)
	}
	// Flags may follow the address; a bare host gets the default port.
	o, err = parseArgs([]string{"chat.example", "-u", "3"}, func(k string) string {
		if k == PasswordEnv {
			return "from-env"
		}
		return ""
	}, io.Discard)
	if err != nil || o.addr != "chat.example:6000" || o.user != 3 || o.password != "from-env" {
		t.Fatalf("parseArgs = %+v, %v", o, err)
	}
	if o, err := parseArgs(nil, noEnv, io.Discard); err != nil || o.addr != DefaultAddr || o.ping != 20*time.Second ||
		o.maxFrame != codec.DefaultMaxFrame {
		t.Fatalf("defaults: %+v, %v", o, err)
	}
	if o, err := parseArgs([]string{"-ping", "4s", "-max-frame", "1048576"}, noEnv, io.Discard); err != nil ||
		o.ping != 4*time.Second || o.maxFrame != 1<<20 {
		t.Fatalf("-ping, -max-frame: %+v, %v", o, err)
	}
	for _, args := range [][]string{
		{"-u", "abc"}, {"-u", "0"}, {"-p", "pw"}, {"a:1", "b:2"}, {"-bogus"}, {"-wait", "-1s", "-u", "1"}, {"host:port:x"},
		{"-ping", "0s"}, {"-max-frame", "10"},
	} {
		if _, err := parseArgs(args, noEnv, io.Discard); err == nil {
			t.Errorf("parseArgs(%q) succeeded", args)
		}
	}
	var usage strings.Builder
	if _, err := parseArgs([]string{"-h"}, noEnv, &usage); !errors.Is(err, errHelp) ||
		!strings.Contains(usage.String(), "chat:friendid:message") || !strings.Contains(usage.String(), "-wait") {
		t.Fatalf("-h: %v\n%s", err, usage.String())
	}
}

func TestCompleter(t *testing.T) {
	got, n := completer{}.Do([]rune("gro"), 3)
	var names []string
	for _, r := range got {
		names = append(names, string(r))
	}
	if n != 3 || strings.Join(names, ",") != "upchat:,ups" {
		t.Fatalf("complete gro = %q, %d", names, n)
	}
	if got, _ := (completer{}).Do([]rune("chat:1"), 6); len(got) != 0 {
		t.Fatalf("completed an argument: %q", got)
	}
}

func TestPrintedPosition(t *testing.T) {
	s := &session{}
	for _, d := range []codec.Delivery{
		{MsgID: codec.MsgOneChat, Seq: 4},
		{MsgID: codec.MsgGroupChat, GroupID: 1, GSeq: 7},
		{MsgID: codec.MsgGroupChat, GroupID: 2, GSeq: 3},
		{MsgID: codec.MsgGroupChat, GroupID: 1, Seq: 5}, // stored before group logs: the inbox
		{MsgID: codec.MsgGroupChat, GroupID: 1, GSeq: 6},
	} {
		s.markPrintedLocked(d)
	}
	want := position{seq: 5, groups: map[codec.GroupID]codec.Seq{1: 7, 2: 3}}
	if s.printed.seq != want.seq || !maps.Equal(s.printed.groups, want.groups) {
		t.Fatalf("printed = %+v, want %+v", s.printed, want)
	}
	for _, tt := range []struct {
		pos  position
		want bool
	}{
		{position{}, true},
		{want, true},
		{position{seq: 6}, false},
		{position{seq: 5, groups: map[codec.GroupID]codec.Seq{1: 7, 2: 3, 3: 0}}, true},
		{position{groups: map[codec.GroupID]codec.Seq{2: 4}}, false},
		{position{groups: map[codec.GroupID]codec.Seq{3: 1}}, false},
	} {
		if got := s.printed.reached(tt.pos); got != tt.want {
			t.Errorf("printed %+v reached %+v = %v, want %v", s.printed, tt.pos, got, tt.want)
		}
	}
	c := s.printed.clone()
	c.groups[1] = 100
	if s.printed.groups[1] != 7 {
		t.Fatal("clone shares its groups with the original")
	}
}

// The password mask draws stars for what is typed, and keeps the '\n'
// readline paints on Enter, so what follows starts on a line of its own.
func TestMaskPainter(t *testing.T) {
	var m maskPainter
	if got := string(m.Paint([]rune("pw\n"), 0)); got != "pw\n" {
		t.Fatalf("mask off: %q", got)
	}
	m.on.Store(true)
	if got := string(m.Paint([]rune("pässwörd\n"), 0)); got != "********\n" {
		t.Fatalf("mask on: %q", got)
	}
}
