package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/chatcluster/chatcluster/codec"
)

// DefaultAddr is where chatclient connects without an argument: a single
// chatserver's default listen address (for a cluster, give nginx's).
const DefaultAddr = "127.0.0.1:6000"

// PasswordEnv may hold the password for -u instead of -p, which other users
// of the machine can see in the process list.
const PasswordEnv = "CHATCLIENT_PASSWORD"

// options is the parsed command line.
type options struct {
	addr     string
	user     codec.UserID
	password string
	commands []string
	wait     time.Duration
	ping     time.Duration // keep-alive interval
	maxFrame int           // the server's max-frame: longer requests are refused here
}

// Exit statuses.
const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
)

// errHelp is returned by parseArgs for -h, after printing the usage.
var errHelp = errors.New("help requested")

const usageText = `Usage: chatclient [flags] [HOST:PORT]

chatclient is the terminal client of chatcluster. It connects to HOST:PORT
(default ` + DefaultAddr + `; for a cluster give nginx's address).

Interactive use (stdin and stdout are a terminal, no -c): the start menu
(1 login, 2 register, 3 quit), then commands typed at the prompt, with line
editing, Tab completion and history (in the user config directory,
chatcluster/history; lines with passwords are never kept). Incoming messages
appear above the line being typed. Ctrl-C clears the line, Ctrl-D or quit
exits. If the connection drops, chatclient reconnects by itself, logs in
again and carries on after the last message it printed.

Scripted use: with -c, or when stdin is not a terminal, chatclient runs the
-c commands in order, or else one command per line from stdin (blank lines
and lines starting with # are skipped; quit stops reading), prints any
messages that arrive meanwhile, and exits. -c may be repeated; each -c value
is one command, never split on ';', so a message may contain ';' and ':'.
Without -u, log in with a login:userid:password line or -c (register with
signup:username:password). Results and messages go to stdout, errors and
connection notices to stderr, one line each, without colour. Reconnecting
gives up after 30s.

Commands:
%s
Flags:
%s
Exit status: 0 if every command succeeded, 1 if a command or the login
failed (or the session ended: logged in elsewhere, could not reconnect),
2 for a usage error.
`

// parseArgs parses the command line (without the program name). getenv
// reads the environment. For -h it prints the usage to help and returns
// errHelp.
func parseArgs(args []string, getenv func(string) string, help io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("chatclient", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var user string
	fs.StringVar(&user, "u", "", "log in as user `ID` (skips the start menu)")
	fs.StringVar(&o.password, "p", "", "`PASSWORD` for -u (or set "+PasswordEnv+"; asked for when interactive)")
	fs.Func("c", "run `COMMAND` and exit; repeat -c for several, run in order", func(s string) error {
		o.commands = append(o.commands, s)
		return nil
	})
	fs.DurationVar(&o.wait, "wait", 0, "scripted use: after the last command keep printing incoming messages for `DURATION` (e.g. 5s)")
	fs.DurationVar(&o.ping, "ping", defaultPing, "send a keep-alive ping after `DURATION` without traffic; keep it under the server's idle-timeout")
	fs.IntVar(&o.maxFrame, "max-frame", codec.DefaultMaxFrame, "the server's max-frame in `BYTES`: a longer request (a long message) is refused here, unsent")
	usage := func() {
		var flags strings.Builder
		fs.SetOutput(&flags)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
		fmt.Fprintf(help, usageText, helpText(), flags.String())
	}
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				usage()
				return o, errHelp
			}
			return o, err
		}
		if fs.NArg() == 0 {
			break
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
	switch len(positional) {
	case 0:
		o.addr = DefaultAddr
	case 1:
		o.addr = positional[0]
	default:
		return o, fmt.Errorf("too many arguments %q; want at most HOST:PORT", positional)
	}
	if _, _, err := net.SplitHostPort(o.addr); err != nil {
		if strings.Contains(o.addr, ":") && !strings.HasPrefix(o.addr, "[") {
			return o, fmt.Errorf("bad address %q; want HOST:PORT", o.addr)
		}
		_, port, _ := net.SplitHostPort(DefaultAddr)
		o.addr = net.JoinHostPort(o.addr, port) // a bare host gets the default port
	}
	if user != "" {
		id, err := parseID(user)
		if err != nil {
			return o, fmt.Errorf("-u: user id must be a positive number, not %q", user)
		}
		o.user = codec.UserID(id)
	}
	if o.password != "" && o.user == 0 {
		return o, errors.New("-p needs -u")
	}
	if o.password == "" && o.user != 0 {
		o.password = getenv(PasswordEnv)
	}
	if o.wait < 0 {
		return o, errors.New("-wait must not be negative")
	}
	if o.ping < time.Second {
		return o, fmt.Errorf("-ping must be at least 1s, not %v", o.ping)
	}
	if o.maxFrame < 64 {
		return o, fmt.Errorf("-max-frame must be at least 64, not %d", o.maxFrame)
	}
	return o, nil
}
