package main

import (
	"context"
	"errors"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"unicode"

	"github.com/chzyer/readline"

	"github.com/chatcluster/chatcluster/codec"
)

const startMenu = `========================
1. login
2. register
3. quit
========================`

// tty is the interactive front end: readline for input, the start menu,
// then commands until quit.
type tty struct {
	app
	rl   *readline.Instance
	in   *ttyInput
	mask *maskPainter

	mu      sync.Mutex
	cancel  context.CancelFunc // of the command running now, if any
	quitReq bool               // SIGTERM or SIGHUP: leave at the next chance
}

func runInteractive(o options, stdin io.Reader, stdout, stderr io.Writer, color bool) int {
	in := newTTYInput(stdin)
	mask := &maskPainter{}
	rl, err := readline.NewEx(&readline.Config{
		Painter:                mask,
		HistoryFile:            historyPath(),
		HistoryLimit:           1000,
		DisableAutoSaveHistory: true, // lines with passwords must not be kept
		AutoComplete:           completer{},
		Stdin:                  in,
		Stdout:                 stdout,
		Stderr:                 stderr,
		EOFPrompt:              "quit",
		// Not "^C": the line is also interrupted when the session ends
		// by itself (logged in elsewhere), where no key was pressed.
		InterruptPrompt: "\n",
	})
	if err != nil {
		io.WriteString(stderr, "chatclient: "+err.Error()+"\n")
		return exitFailed
	}
	p := &printer{out: rl.Stdout(), err: rl.Stderr(), color: color, errColor: color}
	t := &tty{app: app{s: newSession(o, p, 0), p: p}, rl: rl, in: in, mask: mask}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go t.signals(sigs)

	code := t.loop(o)
	signal.Stop(sigs)
	t.s.Close()
	in.Close()
	rl.Close()
	return code
}

// signals: Ctrl-C while a command runs (the terminal is not in raw mode
// then) cancels it; SIGTERM and SIGHUP make chatclient leave, restoring the
// terminal on the way.
func (t *tty) signals(sigs <-chan os.Signal) {
	for sig := range sigs {
		t.mu.Lock()
		if sig != syscall.SIGINT {
			t.quitReq = true
		}
		if t.cancel != nil {
			t.cancel()
		}
		t.mu.Unlock()
		if sig != syscall.SIGINT {
			t.in.Interrupt()
		}
	}
}

func (t *tty) quitRequested() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.quitReq
}

// command returns a context for one command, cancelled by Ctrl-C.
func (t *tty) command() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	t.mu.Lock()
	t.cancel = cancel
	t.mu.Unlock()
	return ctx, func() {
		t.mu.Lock()
		t.cancel = nil
		t.mu.Unlock()
		cancel()
	}
}

// readLine reads one line with prompt. The error is readline's: io.EOF
// for Ctrl-D (or when chatclient must leave), ErrInterrupt for Ctrl-C.
// Lines are not kept in the history; see keep.
func (t *tty) readLine(prompt string) (string, error) {
	t.in.DrainInterrupts()
	if t.quitRequested() {
		return "", io.EOF
	}
	t.rl.SetPrompt(prompt)
	line, err := t.rl.Readline()
	// readline keeps the line being edited as a draft that Up then Down
	// would bring back; saving "" clears it without writing the file.
	_ = t.rl.SaveHistory("")
	return line, err
}

// keep adds line to the history (and its file).
func (t *tty) keep(line string) { _ = t.rl.SaveHistory(line) }

// readPassword reads a line shown as stars. readline's own password mode
// swaps its configuration while its reader goroutine runs (a data race), so
// the main configuration's painter does the masking instead.
func (t *tty) readPassword(prompt string) (string, error) {
	t.mask.on.Store(true)
	defer t.mask.on.Store(false)
	return t.readLine(prompt)
}

// maskPainter draws the line being typed as stars while on is set (one per
// column, so that readline's cursor arithmetic still holds). Control
// characters pass as they are: on Enter readline paints the line with its
// '\n', which ends the line on the screen.
type maskPainter struct{ on atomic.Bool }

func (m *maskPainter) Paint(line []rune, _ int) []rune {
	if !m.on.Load() {
		return line
	}
	out := make([]rune, 0, len(line))
	for _, r := range line {
		if unicode.IsControl(r) {
			out = append(out, r)
			continue
		}
		for range (readline.Runes{}).Width(r) {
			out = append(out, '*')
		}
	}
	return out
}

func (t *tty) loop(o options) int {
	if o.user != 0 {
		t.loginAs(o.user, o.password)
	}
	for {
		if t.quitRequested() {
			return exitOK
		}
		if !t.s.LoggedIn() {
			if quit := t.menu(); quit {
				return exitOK
			}
			continue
		}
		if quit := t.commands(); quit {
			return exitOK
		}
	}
}

// menu shows the start menu once and handles one choice. It reports
// whether the user chose to quit.
func (t *tty) menu() (quit bool) {
	t.p.Print(startMenu)
	for {
		line, err := t.readLine("choice: ")
		if err != nil { // Ctrl-C or Ctrl-D
			return true
		}
		choice := strings.ToLower(strings.TrimSpace(line))
		switch choice {
		case "":
			continue
		case "1", "login":
			t.menuLogin()
			return false
		case "2", "register", "signup":
			t.menuSignup()
			return false
		case "3", "quit", "exit", "q":
			return true
		}
		// login:ID:PASSWORD and signup:NAME:PASSWORD work here too.
		if cmd, err := Parse(line); err == nil && (cmd.Kind == CmdLogin || cmd.Kind == CmdSignup || cmd.Kind == CmdQuit) {
			if cmd.Kind == CmdQuit {
				return true
			}
			ctx, done := t.command()
			_ = t.execute(ctx, cmd)
			done()
			return false
		}
		t.p.Error("invalid input; choose 1, 2 or 3")
	}
}

func (t *tty) menuLogin() {
	idText, err := t.readLine("userid: ")
	if err != nil {
		return
	}
	id, err := parseID(idText)
	if err != nil {
		t.p.Error("login: user id must be a positive number")
		return
	}
	t.loginAs(codec.UserID(id), "")
}

// loginAs logs in as id, asking for the password when it is not given.
func (t *tty) loginAs(id codec.UserID, password string) {
	if password == "" {
		pw, err := t.readPassword("userpassword: ")
		if err != nil || pw == "" {
			return
		}
		password = pw
	}
	ctx, done := t.command()
	defer done()
	if err := t.login(ctx, "login", id, password); err == nil {
		t.p.Print(helpText())
	}
}

func (t *tty) menuSignup() {
	name, err := t.readLine("username: ")
	if err != nil {
		return
	}
	if name = strings.TrimSpace(name); name == "" {
		t.p.Error("register: user name is empty")
		return
	}
	pw, err := t.readPassword("userpassword: ")
	if err != nil || pw == "" {
		return
	}
	ctx, done := t.command()
	defer done()
	_ = t.signup(ctx, "register", name, pw)
}

// commands reads and runs commands while the user is logged in. It returns
// true to quit, false to go back to the start menu.
func (t *tty) commands() (quit bool) {
	_, name := t.s.User()
	prompt := sanitize(name) + "> "
	if t.p.color {
		prompt = ansiBold + prompt + ansiReset
	}
	// When the session ends by itself (logged in elsewhere), interrupt the
	// line being typed so that the start menu comes back at once.
	stop := make(chan struct{})
	defer close(stop)
	go func(ended <-chan struct{}) {
		select {
		case <-ended:
			t.in.Interrupt()
		case <-stop:
		}
	}(t.s.Ended())

	for {
		if !t.s.LoggedIn() {
			return false
		}
		line, err := t.readLine(prompt)
		switch {
		case errors.Is(err, readline.ErrInterrupt):
			if t.s.LoggedIn() && !t.quitRequested() && strings.TrimSpace(line) == "" {
				t.p.Print("(type quit to exit, or press Ctrl-D)")
			}
			if t.quitRequested() {
				return true
			}
			continue
		case err != nil: // Ctrl-D or the terminal went away
			return true
		}
		cmd, perr := Parse(line)
		if errors.Is(perr, errEmpty) {
			continue
		}
		if !hasSecret(line) {
			t.keep(line)
		}
		if perr != nil {
			t.p.Error(perr.Error())
			continue
		}
		if cmd.Kind == CmdQuit {
			return true
		}
		ctx, done := t.command()
		err = t.execute(ctx, cmd)
		done()
		if cmd.Kind == CmdLogout && !t.s.LoggedIn() {
			return false
		}
	}
}

// hasSecret reports whether line may hold a password (login or signup),
// so it must not go into the history file.
func hasSecret(line string) bool {
	head, _, _ := strings.Cut(line, ":")
	switch strings.ToLower(strings.TrimSpace(head)) {
	case "login", "signup", "register":
		return true
	}
	return false
}

// historyPath returns the history file, creating its directory and the
// file (private to the user) if needed; "" when that is not possible.
func historyPath() string {
	dir, err := os.UserConfigDir()
	if err != nil {
		return ""
	}
	dir = filepath.Join(dir, "chatcluster")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return ""
	}
	path := filepath.Join(dir, "history")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return ""
	}
	f.Close()
	return path
}

// completer completes command names with Tab.
type completer struct{}

func (completer) Do(line []rune, pos int) ([][]rune, int) {
	prefix := strings.ToLower(string(line[:pos]))
	if strings.ContainsAny(prefix, ": ") {
		return nil, 0
	}
	var out [][]rune
	for _, s := range commandSpecs {
		if !strings.HasPrefix(s.name, prefix) || s.kind == CmdLogin || s.kind == CmdSignup {
			continue
		}
		name := s.name
		if strings.Contains(s.usage, ":") {
			name += ":"
		}
		out = append(out, []rune(name[len(prefix):]))
	}
	return out, len(prefix)
}

// ttyInput is readline's stdin: the terminal, plus Interrupt, which makes
// a pending Readline return ErrInterrupt as if Ctrl-C had been pressed.
type ttyInput struct {
	data   chan chunk
	intr   chan struct{}
	rest   []byte
	err    error
	closed chan struct{}
	once   sync.Once
}

type chunk struct {
	b   []byte
	err error
}

func newTTYInput(r io.Reader) *ttyInput {
	t := &ttyInput{data: make(chan chunk), intr: make(chan struct{}, 1), closed: make(chan struct{})}
	go func() {
		for {
			b := make([]byte, 1024)
			n, err := r.Read(b)
			select {
			case t.data <- chunk{b[:n], err}:
			case <-t.closed:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return t
}

// Read is called by readline's reader goroutine only.
func (t *ttyInput) Read(p []byte) (int, error) {
	if len(t.rest) == 0 && t.err != nil {
		return 0, t.err
	}
	if len(t.rest) == 0 {
		select {
		case c := <-t.data:
			t.rest, t.err = c.b, c.err
			if len(t.rest) == 0 && t.err != nil {
				return 0, t.err
			}
		case <-t.intr:
			p[0] = readline.CharInterrupt
			return 1, nil
		case <-t.closed:
			return 0, io.EOF
		}
	}
	n := copy(p, t.rest)
	t.rest = t.rest[n:]
	return n, nil
}

// Interrupt makes the current (or next) Readline return ErrInterrupt.
func (t *ttyInput) Interrupt() {
	select {
	case t.intr <- struct{}{}:
	default:
	}
}

// DrainInterrupts forgets an Interrupt that no Readline has consumed.
func (t *ttyInput) DrainInterrupts() {
	select {
	case <-t.intr:
	default:
	}
}

func (t *ttyInput) Close() error {
	t.once.Do(func() { close(t.closed) })
	return nil
}
