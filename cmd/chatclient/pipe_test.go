package main

import (
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/chatcluster/chatcluster/codec"
)

// signupCC registers a user with the binary and returns its id.
func signupCC(t *testing.T, ts *testServer, name, pw string) codec.UserID {
	t.Helper()
	r := runCC(t, "", "-c", "signup:"+name+":"+pw, ts.Addr)
	m := userIDRE.FindStringSubmatch(r.stdout)
	if r.code != 0 || m == nil || !strings.Contains(r.stdout, name+" register success, userid is ") {
		t.Fatalf("signup %s: %+v", name, r)
	}
	id, _ := strconv.ParseInt(m[1], 10, 64)
	return codec.UserID(id)
}

func noANSI(t *testing.T, r result) {
	t.Helper()
	if strings.Contains(r.stdout+r.stderr, "\x1b") {
		t.Fatalf("escape codes in pipe output: %q %q", r.stdout, r.stderr)
	}
}

// TestScriptedCommands runs every command through -c and through a pipe.
func TestScriptedCommands(t *testing.T) {
	ts := startServer(t)
	alice := &user{name: "alice", pw: "secret-a"}
	alice.id = signupCC(t, ts, alice.name, alice.pw)
	carolID := signupCC(t, ts, "carol", "secret-c")
	bob := ts.newUser("bob") // watches with the client package

	// One-to-one chat (a message may hold ':' and ';'), addfriend, creategroup.
	r := runCC(t, "", append(alice.loginArgs(), ts.Addr,
		"-c", fmt.Sprintf("addfriend:%d", bob.id),
		"-c", fmt.Sprintf("chat:%d:hi: there; ok", bob.id),
		"-c", "creategroup:gophers:all about: Go",
		"-c", "friends", "-c", "groups", "-c", "help")...)
	noANSI(t, r)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	for _, want := range []string{
		"======================login user======================\ncurrent login user => id:" + fmt.Sprint(alice.id) + " name:alice\n",
		fmt.Sprintf("added friend %d\n", bob.id),
		fmt.Sprintf("sent to %d (", bob.id),
		"----------------------friend list---------------------\n" + fmt.Sprintf("%d (added this session)\n", bob.id),
		"chat         : one-to-one chat, format chat:friendid:message\n",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout lacks %q", want)
		}
	}
	m := regexp.MustCompile(`created group (\d+) gophers\n`).FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("no group created:\n%s", r.stdout)
	}
	gid := m[1]
	if want := gid + " gophers all about: Go\n    " + fmt.Sprint(alice.id) + " alice online creator\n"; !strings.Contains(r.stdout, want) {
		t.Errorf("groups lacks %q", want)
	}
	if d := next(t, bob.c); d.Msg != "hi: there; ok" || d.ID != alice.id || d.Name != "alice" || d.MsgID != codec.MsgOneChat {
		t.Fatalf("bob got %+v", d)
	}

	// A pipe without -u: log in with a line, join the group, log out.
	r = runCC(t, fmt.Sprintf("# carol joins\nlogin:%d:secret-c\n\naddgroup:%s\ngroups\nloginout\n", carolID, gid), ts.Addr)
	noANSI(t, r)
	if r.code != 0 || !strings.Contains(r.stdout, "current login user => id:"+fmt.Sprint(carolID)+" name:carol") ||
		!strings.Contains(r.stdout, "joined group "+gid+"\n") || !strings.Contains(r.stdout, "logged out\n") {
		t.Fatalf("carol: %+v", r)
	}
	if strings.Contains(r.stdout+r.stderr, "secret-c") {
		t.Fatal("password printed")
	}

	// Group chat reaches bob live and carol (offline) at her next login;
	// bob's message reaches alice at hers.
	g, _ := strconv.ParseInt(gid, 10, 64)
	if err := bob.c.AddGroup(ctxT(t), codec.GroupID(g)); err != nil {
		t.Fatal(err)
	}
	r = runCC(t, "", append(alice.loginArgs(), "-c", "groupchat:"+gid+":hello group", ts.Addr)...)
	if r.code != 0 || !strings.Contains(r.stdout, "sent to group "+gid+" (") {
		t.Fatalf("groupchat: %+v", r)
	}
	if d := next(t, bob.c); d.Msg != "hello group" || d.GroupID != codec.GroupID(g) || d.ID != alice.id {
		t.Fatalf("bob got %+v", d)
	}
	if _, err := bob.c.Chat(ctxT(t), alice.id, "while you were away"); err != nil {
		t.Fatal(err)
	}
	r = runCC(t, "", "-u", fmt.Sprint(carolID), "-p", "secret-c", ts.Addr)
	offline := regexp.MustCompile(`(?m)^group \[` + gid + `\] \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[` + fmt.Sprint(alice.id) + `\]alice said: hello group$`)
	if r.code != 0 || !offline.MatchString(r.stdout) || strings.Index(r.stdout, "group [") < strings.Index(r.stdout, ruleEnd) {
		t.Fatalf("carol's offline message: %+v", r)
	}
	r = runCC(t, "", append(alice.loginArgs(), ts.Addr)...)
	offline = regexp.MustCompile(`(?m)^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[` + fmt.Sprint(bob.id) + `\]bob said: while you were away$`)
	if r.code != 0 || !offline.MatchString(r.stdout) {
		t.Fatalf("alice's offline message: %+v", r)
	}
	// They were acknowledged after printing: not printed again.
	waitAllAcked(t, ts, carolID)
	waitGroupAcked(t, ts, carolID, codec.GroupID(g), 1) // "hello group" is the group's first message
	waitAllAcked(t, ts, alice.id)
	r = runCC(t, "", "-u", fmt.Sprint(carolID), "-p", "secret-c", ts.Addr)
	if r.code != 0 || strings.Contains(r.stdout, "said:") {
		t.Fatalf("offline message printed twice: %+v", r)
	}
	r = runCC(t, "", append(alice.loginArgs(), "-c", "loginout", ts.Addr)...)
	if r.code != 0 || strings.Contains(r.stdout, "said:") || !strings.Contains(r.stdout, "logged out\n") {
		t.Fatalf("offline message printed twice: %+v", r)
	}
}

// TestScriptedBadInput: every mistake is one line on stderr, sends nothing
// and makes the exit status 1; the good lines still run.
func TestScriptedBadInput(t *testing.T) {
	ts := startServer(t)
	alice := ts.newUser("alice")
	bob := ts.newUser("bob")
	if err := bob.c.AddFriend(ctxT(t), alice.id); err != nil {
		t.Fatal(err)
	}
	gid, err := bob.c.CreateGroup(ctxT(t), "bobs", "")
	if err != nil {
		t.Fatal(err)
	}
	alice.c.Close() // the binary logs in as alice
	b := fmt.Sprint(bob.id)
	input := strings.Join([]string{
		"bogus",
		"chat:x:hi",
		"chat:" + b + ":",
		"chat:" + b,
		"addfriend:0",
		"groupchat:1:   ",
		"creategroup",
		"chat:999:hi",
		"chat:" + b + ":" + strings.Repeat("<", 30000), // 30,000 bytes: under max-frame, over max-message
		"chat:" + b + ":" + strings.Repeat("x", 70000), // over max-frame: refused unsent, no reconnect
		"addfriend:" + b,
		fmt.Sprintf("groupchat:%d:let me in", gid),
		"creategroup:" + strings.Repeat("n", 51) + ":x",
		"login:" + b + ":whatever",
		"chat:" + b + ":the only message",
	}, "\n")
	r := runCC(t, input, append(alice.loginArgs(), ts.Addr)...)
	noANSI(t, r)
	want := strings.Join([]string{
		`unknown command "bogus"; type help`,
		"chat: friend id must be a positive number",
		"chat: message is empty",
		"chat: usage: chat:friendid:message",
		"addfriend: friend id must be a positive number",
		"groupchat: message is empty",
		"creategroup: usage: creategroup:groupname:groupdesc",
		"chat: no such user or group (no user 999)",
		"chat: bad request: msg must be 1..4096 bytes",
		"chat: message too large",
		"addfriend: already exists: already friends with " + b,
		fmt.Sprintf("groupchat: not allowed: you are not a member (not a member of group %d)", gid),
		"creategroup: bad request: groupname must be 1..50 characters",
		"login: already logged in; type loginout first",
	}, "\n") + "\n"
	if r.code != 1 || r.stderr != want {
		t.Fatalf("exit %d, stderr:\n%s\nwant:\n%s", r.code, r.stderr, want)
	}
	if !strings.Contains(r.stdout, "sent to "+b+" (") {
		t.Fatalf("good line not run: %q", r.stdout)
	}
	if d := next(t, bob.c); d.Msg != "the only message" {
		t.Fatalf("bob got %+v", d)
	}
	none(t, bob.c)

	// Wrong password; commands before login; an unknown server.
	r = runCC(t, "", "-u", fmt.Sprint(alice.id), "-p", "wrong-pw", "-c", "friends", ts.Addr)
	if r.code != 1 || r.stderr != "login: wrong id or password\n" || r.stdout != "" {
		t.Fatalf("wrong password: %+v", r)
	}
	r = runCC(t, "chat:"+b+":hi\nhelp\n", ts.Addr)
	if r.code != 1 || r.stderr != "chat: not logged in; log in first (login:userid:password)\n" || !strings.Contains(r.stdout, "help ") {
		t.Fatalf("before login: %+v", r)
	}
	none(t, bob.c)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	r = runCC(t, "", "-c", "signup:x:secret1", closed)
	if r.code != 1 || r.stderr != "cannot connect to "+closed+": connection refused\n" {
		t.Fatalf("closed port: %+v", r)
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{
		{"-u", "abc", "-c", "help"},
		{"-u", "1", "-c", "help"}, // no password when not interactive
		{"-p", "pw"},
		{"127.0.0.1:1", "127.0.0.1:2"},
		{"-nosuchflag"},
	} {
		r := runCC(t, "", args...)
		if r.code != 2 || !strings.HasPrefix(r.stderr, "chatclient: ") || !strings.Contains(r.stderr, "chatclient -h") {
			t.Errorf("%q: %+v", args, r)
		}
	}
	r := runCC(t, "", "-h")
	if r.code != 0 || !strings.Contains(r.stdout, "Usage: chatclient [flags] [HOST:PORT]") ||
		!strings.Contains(r.stdout, "groupchat:groupid:message") || !strings.Contains(r.stdout, "Exit status") {
		t.Fatalf("-h: %+v", r)
	}
}

// TestScriptedWait: -wait keeps printing incoming messages for a while.
func TestScriptedWait(t *testing.T) {
	ts := startServer(t)
	alice := ts.newUser("alice")
	bob := ts.newUser("bob")
	alice.c.Close()
	p := startProc(t, append(alice.loginArgs(), "-c", "friends", "-wait", "4s", ts.Addr)...)
	p.waitOut("(as of your login at ")
	if _, err := bob.c.Chat(ctxT(t), alice.id, "during the wait"); err != nil {
		t.Fatal(err)
	}
	p.waitOut("[" + fmt.Sprint(bob.id) + "]bob said: during the wait\n")
	if code := p.exit(); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// TestScriptedKicked: a login elsewhere ends a script with status 1.
func TestScriptedKicked(t *testing.T) {
	ts := startServer(t)
	alice := ts.newUser("alice")
	alice.c.Close()
	p := startProc(t, append(alice.loginArgs(), ts.Addr)...)
	p.waitOut("current login user")
	ts.login(alice)
	p.waitErr("logged in elsewhere; session closed\n")
	if code := p.exit(); code != 1 {
		t.Fatalf("exit %d", code)
	}
}

// TestScriptedMembers: groups shows the size of a group too big for
// LOGIN_ACK to list, and members lists all of its members (several
// GROUP_USERS pages); a non-member is refused.
func TestScriptedMembers(t *testing.T) {
	ts := startServer(t)
	ctx := ctxT(t)
	alice := ts.newUser("alice")
	carol := ts.newUser("carol")
	gid, err := alice.c.CreateGroup(ctx, "big", "many")
	if err != nil {
		t.Fatal(err)
	}
	// 1,500 more members, straight into the database (the rows ADD_GROUP
	// writes): more than LOGIN_ACK lists (login-group-users, 1000).
	const n = 1500
	db := ts.App.Store.DB()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		res, err := tx.Exec("INSERT INTO users (name, password, created_ms) VALUES (?, x'00', 0)", fmt.Sprintf("m%04d", i))
		if err != nil {
			t.Fatal(err)
		}
		id, _ := res.LastInsertId()
		if _, err := tx.Exec("INSERT INTO group_members (groupid, userid, role, joined_ms) VALUES (?, ?, 'normal', ?)", gid, id, i+1); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tx.Exec("UPDATE chat_groups SET members = members + ? WHERE id = ?", n, gid); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	r := runCC(t, "", append(alice.loginArgs(), "-c", "groups", "-c", fmt.Sprintf("members:%d", gid), ts.Addr)...)
	noANSI(t, r)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if want := fmt.Sprintf("%d big many\n    (%d members; members:%d lists them)\n", gid, n+1, gid); !strings.Contains(r.stdout, want) {
		t.Errorf("groups lacks %q:\n%s", want, r.stdout)
	}
	head := fmt.Sprintf("group %d: %d members\n    %d alice online creator\n", gid, n+1, alice.id)
	i := strings.Index(r.stdout, head)
	if i < 0 {
		t.Fatalf("members lacks %q", head)
	}
	lines := strings.Split(strings.TrimSuffix(r.stdout[i+len(head):], "\n"), "\n")
	if len(lines) < n || lines[0] != fmt.Sprintf("    %d m0000 offline normal", alice.id+2) || lines[n-1] != fmt.Sprintf("    %d m%04d offline normal", alice.id+1+n, n-1) {
		t.Fatalf("members: %d lines after alice, first %q, last %q", len(lines), lines[0], lines[min(n, len(lines))-1])
	}
	r = runCC(t, "", append(carol.loginArgs(), "-c", fmt.Sprintf("members:%d", gid), ts.Addr)...)
	if want := fmt.Sprintf("members: not allowed: you are not a member (not a member of group %d)\n", gid); r.code != 1 || r.stderr != want {
		t.Fatalf("non-member: exit %d, stderr %q; want %q", r.code, r.stderr, want)
	}
}
