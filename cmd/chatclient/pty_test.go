//go:build !windows

package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/creack/pty"

	"github.com/chatcluster/chatcluster/codec"
)

// term is chatclient running on a pseudo-terminal, as a person uses it.
type term struct {
	t    *testing.T
	f    *os.File
	cmd  *exec.Cmd
	raw  *syncBuffer
	pos  int // how far expect has matched in the stripped output
	done chan struct{}
}

func startTerm(t *testing.T, extraEnv []string, args ...string) *term {
	t.Helper()
	tm := &term{t: t, raw: &syncBuffer{}, done: make(chan struct{})}
	tm.cmd = exec.Command(binPath, args...)
	tm.cmd.Env = env(t, extraEnv...)
	f, err := pty.StartWithSize(tm.cmd, &pty.Winsize{Rows: 60, Cols: 200})
	if err != nil {
		t.Fatalf("start on a pty: %v", err)
	}
	tm.f = f
	copied := make(chan struct{})
	go func() {
		io.Copy(tm.raw, f) // ends with EIO when the process is gone
		close(copied)
	}()
	go func() {
		tm.cmd.Wait()
		close(tm.done)
	}()
	t.Cleanup(func() {
		tm.cmd.Process.Kill()
		<-tm.done
		f.Close()
		<-copied
		t.Logf("terminal screen:\n%s", strings.Join(render(tm.raw.String()), "\n"))
	})
	return tm
}

// typ types s; "\r" is Enter.
func (tm *term) typ(s string) {
	tm.t.Helper()
	if _, err := tm.f.Write([]byte(s)); err != nil {
		tm.t.Fatalf("type %q: %v", s, err)
	}
}

// screen is everything printed so far, without escape codes.
func (tm *term) screen() string { return stripANSI(tm.raw.String()) }

// expect waits for s to be printed after what the previous expect matched.
func (tm *term) expect(s string) {
	tm.t.Helper()
	checkFor(tm.t, waitLong, func() error {
		out := tm.screen()
		if i := strings.Index(out[tm.pos:], s); i >= 0 {
			tm.pos += i + len(s)
			return nil
		}
		return fmt.Errorf("no %q after:\n%s", s, out[tm.pos:])
	})
}

// expectRE is expect for a regular expression; it returns the submatches.
func (tm *term) expectRE(re *regexp.Regexp) []string {
	tm.t.Helper()
	var m []string
	checkFor(tm.t, waitLong, func() error {
		out := tm.screen()
		loc := re.FindStringSubmatchIndex(out[tm.pos:])
		if loc == nil {
			return fmt.Errorf("no %v after:\n%s", re, out[tm.pos:])
		}
		for i := 0; i < len(loc); i += 2 {
			m = append(m, out[tm.pos+loc[i]:tm.pos+loc[i+1]])
		}
		tm.pos += loc[1]
		return nil
	})
	return m
}

func (tm *term) exit() int {
	tm.t.Helper()
	return waitExit(tm.t, tm.done, tm.cmd)
}

// TestInteractive drives the start menu, login, every command, bad input,
// a message arriving while a line is half typed, a login elsewhere and
// loginout on a pseudo-terminal.
func TestInteractive(t *testing.T) {
	ts := startServer(t)
	bob := ts.newUser("bob")
	config := t.TempDir()
	// History from an earlier run.
	if err := os.MkdirAll(filepath.Join(config, "chatcluster"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(config, "chatcluster", "history"), []byte("groups\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tm := startTerm(t, []string{"XDG_CONFIG_HOME=" + config}, ts.Addr)

	// Register from the start menu; the password is masked.
	tm.expect("========================\n1. login\n2. register\n3. quit\n========================\n")
	tm.expect("choice: ")
	tm.typ("2\r")
	tm.expect("username: ")
	tm.typ("alice\r")
	tm.expect("userpassword: ")
	tm.typ("secret-a\r")
	m := tm.expectRE(regexp.MustCompile(`alice register success, userid is (\d+), do not forget it!`))
	var aliceID codec.UserID
	fmt.Sscan(m[1], &aliceID)
	alice := &user{id: aliceID, name: "alice", pw: "secret-a"}

	// A wrong password, then the right one.
	tm.expect("choice: ")
	tm.typ("1\r")
	tm.expect("userid: ")
	tm.typ(fmt.Sprint(aliceID) + "\r")
	tm.expect("userpassword: ")
	tm.typ("wrong-pw\r")
	tm.expect("login: wrong id or password")
	tm.expect("choice: ")
	tm.typ("1\r")
	tm.expect("userid: ")
	tm.typ(fmt.Sprint(aliceID) + "\r")
	tm.expect("userpassword: ")
	tm.typ("secret-a\r")
	tm.expect(fmt.Sprintf("current login user => id:%d name:alice\n", aliceID))
	tm.expect("help         : show all commands, format help\n")
	tm.expect("alice> ")
	// Up recalls the earlier run's command, and Down must not bring back
	// what was typed at the menu (the password): only commands are history.
	tm.typ("\x1b[A")
	tm.expect("alice> groups")
	tm.typ("\x1b[B")
	tm.typ("\x1b[B")
	tm.typ("friends\r")
	tm.expect("(no friends yet; addfriend:friendid)\n")
	tm.expect("alice> ")

	B := fmt.Sprint(bob.id)
	tm.typ("addfriend:" + B + "\r")
	tm.expect("added friend " + B + "\n")
	tm.expect("alice> ")

	// A message arrives while a line is half typed: it is printed above the
	// line, which is redrawn intact and can be finished.
	tm.typ("chat:" + B + ":hel")
	tm.expect("alice> chat:" + B + ":hel")
	if _, err := bob.c.Chat(ctxT(t), aliceID, "ping while you type"); err != nil {
		t.Fatal(err)
	}
	tm.expect("bob said: ping while you type")
	tm.expect("alice> chat:" + B + ":hel")
	// On the screen: the message on a line of its own, then the prompt and
	// the half-typed line, as they were.
	delivery := regexp.MustCompile(`^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[` + B + `\]bob said: ping while you type$`)
	checkFor(t, waitLong, func() error {
		lines := render(tm.raw.String())
		n := len(lines)
		if n < 3 || !delivery.MatchString(lines[n-2]) || lines[n-1] != "alice> chat:"+B+":hel" || lines[n-3] != "added friend "+B {
			return fmt.Errorf("screen ends with %q", lines[max(0, n-3):])
		}
		return nil
	})
	tm.typ("lo\r")
	tm.expect("sent to " + B + " (")
	if d := next(t, bob.c); d.Msg != "hello" || d.ID != aliceID {
		t.Fatalf("bob got %+v", d)
	}

	// Bad input: one line each, nothing sent.
	for _, tc := range []struct{ line, want string }{
		{"bogus", `unknown command "bogus"; type help`},
		{"chat:abc:hi", "chat: friend id must be a positive number"},
		{"chat:" + B + ":", "chat: message is empty"},
		{"chat:" + B + ":   ", "chat: message is empty"},
		{"addgroup:x", "addgroup: group id must be a positive number"},
		{"chat:999:hi", "chat: no such user or group (no user 999)"},
	} {
		tm.typ(tc.line + "\r")
		tm.expect(tc.want + "\n")
		tm.expect("alice> ")
	}
	none(t, bob.c)

	// The other commands.
	tm.typ("creategroup:tea:green and black\r")
	g := tm.expectRE(regexp.MustCompile(`created group (\d+) tea\n`))[1]
	tm.typ("groupchat:" + g + ":tea time\r")
	tm.expect("sent to group " + g + " (")
	tm.typ("addgroup:" + g + "\r")
	tm.expect("addgroup: already exists: already a member of group " + g + "\n")
	tm.typ("friends\r")
	tm.expect("----------------------friend list---------------------\n" + B + " (added this session)\n(as of your login at ")
	tm.typ("groups\r")
	tm.expect(g + " tea green and black\n    " + fmt.Sprint(aliceID) + " alice online creator\n")
	tm.typ("help\r")
	tm.expect("loginout     : log out and return to the start menu, format loginout\n")

	// Ctrl-C drops the line being typed; on an empty line it gives a hint.
	tm.expect("alice> ")
	tm.typ("chat:" + B + ":never mind")
	tm.expect("never mind")
	tm.typ("\x03")
	tm.expect("alice> ")
	tm.typ("\x03")
	tm.expect("(type quit to exit, or press Ctrl-D)")
	none(t, bob.c)

	// Up-arrow recalls history.
	tm.expect("alice> ")
	tm.typ("\x1b[A")
	tm.expect("alice> help")
	tm.typ("\r")
	tm.expect("loginout     : log out and return to the start menu, format loginout\n")

	// A login elsewhere ends the session and brings back the start menu,
	// without showing a Ctrl-C nobody pressed.
	start := tm.pos
	ts.login(alice)
	tm.expect("logged in elsewhere; session closed\n")
	tm.expect("choice: ")
	if shown := tm.screen()[start:tm.pos]; strings.Contains(shown, "^C") {
		t.Fatalf("a kick showed ^C:\n%s", shown)
	}
	alice.c.Close()

	// Log in again (offline messages follow the user data), log out, quit.
	if _, err := bob.c.Chat(ctxT(t), aliceID, "welcome back"); err != nil {
		t.Fatal(err)
	}
	tm.typ("1\r")
	tm.expect("userid: ")
	tm.typ(fmt.Sprint(aliceID) + "\r")
	tm.expect("userpassword: ")
	tm.typ("secret-a\r")
	tm.expect(fmt.Sprintf("current login user => id:%d name:alice\n", aliceID))
	tm.expect(B + " bob online\n")
	tm.expect("======================================================\n")
	tm.expect("[" + B + "]bob said: welcome back\n")
	tm.expect("alice> ")
	tm.typ("loginout\r")
	tm.expect("logged out\n")
	tm.expect("choice: ")
	tm.typ("3\r")
	if code := tm.exit(); code != 0 {
		t.Fatalf("exit %d", code)
	}

	raw := tm.raw.String()
	if strings.Contains(raw, "secret-a") {
		t.Error("the password was echoed")
	}
	if !strings.Contains(raw, ansiBold+ansiCyan+"["+B+"]bob") || !strings.Contains(raw, ansiRed+`unknown command "bogus"`) {
		t.Error("no colour on a terminal")
	}
	history, err := os.ReadFile(filepath.Join(config, "chatcluster", "history"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(history), "chat:"+B+":hello\n") || strings.Contains(string(history), "secret") {
		t.Errorf("history file:\n%s", history)
	}
}

// TestInteractiveFlags: -u and -p skip the menu; NO_COLOR turns colour off.
func TestInteractiveFlags(t *testing.T) {
	ts := startServer(t)
	alice := ts.newUser("alice")
	alice.c.Close()
	tm := startTerm(t, []string{"NO_COLOR=1"}, append(alice.loginArgs(), ts.Addr)...)
	tm.expect(fmt.Sprintf("current login user => id:%d name:alice\n", alice.id))
	tm.expect("alice> ")
	tm.typ("quit\r")
	if code := tm.exit(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if raw := tm.raw.String(); strings.Contains(raw, ansiBold) || strings.Contains(raw, ansiGreen) {
		t.Errorf("colour despite NO_COLOR: %q", raw)
	}
}

// render plays terminal output on an unbounded screen, as far as readline
// uses escape sequences, and returns its lines without trailing blanks.
func render(raw string) []string {
	var lines [][]rune
	row, col := 0, 0
	at := func(r int) []rune {
		for len(lines) <= r {
			lines = append(lines, nil)
		}
		return lines[r]
	}
	rs := []rune(raw)
	for i := 0; i < len(rs); i++ {
		switch c := rs[i]; {
		case c == '\x1b' && i+1 < len(rs) && rs[i+1] == '[':
			j := i + 2
			for j < len(rs) && (rs[j] >= '0' && rs[j] <= '9' || rs[j] == ';' || rs[j] == '?') {
				j++
			}
			if j >= len(rs) {
				i = j
				break
			}
			n := 1
			fmt.Sscan(string(rs[i+2:j]), &n)
			param := string(rs[i+2 : j])
			switch rs[j] {
			case 'A':
				row = max(0, row-n)
			case 'B':
				row += n
			case 'C':
				col += n
			case 'D':
				col = max(0, col-n)
			case 'G':
				col = n - 1
			case 'K':
				l := at(row)
				if param == "2" {
					lines[row] = nil
				} else if col < len(l) {
					lines[row] = l[:col]
				}
			case 'J':
				l := at(row)
				if col < len(l) {
					lines[row] = l[:col]
				}
				lines = lines[:row+1]
			}
			i = j
		case c == '\x1b':
			i++ // a two-character sequence
		case c == '\r':
			col = 0
		case c == '\n':
			row++
		case c == '\b':
			col = max(0, col-1)
		case c < ' ':
		default:
			l := at(row)
			for len(l) <= col {
				l = append(l, ' ')
			}
			l[col] = c
			lines[row] = l
			col++
		}
	}
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = strings.TrimRight(string(l), " ")
	}
	for len(out) > 0 && out[len(out)-1] == "" {
		out = out[:len(out)-1]
	}
	return out
}

// TestInteractiveReconnect restarts the server while a line is half typed:
// the two connection lines appear above it, the line survives, and once
// finished it is sent on the new connection.
func TestInteractiveReconnect(t *testing.T) {
	ts := startServer(t)
	alice := ts.newUser("alice")
	bob := ts.newUser("bob")
	alice.c.Close()
	tm := startTerm(t, nil, append(alice.loginArgs(), ts.Addr)...)
	tm.expect("alice> ")
	B := fmt.Sprint(bob.id)
	tm.typ("chat:" + B + ":still ")
	tm.expect("alice> chat:" + B + ":still ")

	ts.stop()
	tm.expect("connection lost; reconnecting…")
	tm.expect("alice> chat:" + B + ":still ")
	ts.start()
	tm.expect("reconnected to " + ts.Addr + " as alice (resuming after message #0)")
	tm.expect("alice> chat:" + B + ":still ")
	checkFor(t, waitLong, func() error {
		lines := render(tm.raw.String())
		n := len(lines)
		if n < 3 || lines[n-3] != "connection lost; reconnecting…" ||
			lines[n-2] != "reconnected to "+ts.Addr+" as alice (resuming after message #0)" ||
			lines[n-1] != "alice> chat:"+B+":still" {
			return fmt.Errorf("screen ends with %q", lines[max(0, n-3):])
		}
		return nil
	})
	tm.typ("here\r")
	tm.expect("sent to " + B + " (")
	ts.login(bob)
	if d := next(t, bob.c); d.Msg != "still here" || d.ID != alice.id {
		t.Fatalf("bob got %+v", d)
	}
	tm.typ("quit\r")
	if code := tm.exit(); code != 0 {
		t.Fatalf("exit %d", code)
	}
}
