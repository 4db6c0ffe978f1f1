package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/chzyer/readline"
)

// run is the whole program; it returns the exit status.
func run(args []string, stdin, stdout, stderr *os.File, getenv func(string) string) int {
	o, err := parseArgs(args, getenv, stdout)
	if errors.Is(err, errHelp) {
		return exitOK
	}
	if err != nil {
		usageError(stderr, err)
		return exitUsage
	}
	inTTY := readline.IsTerminal(int(stdin.Fd()))
	outTTY := readline.IsTerminal(int(stdout.Fd()))
	errTTY := readline.IsTerminal(int(stderr.Fd()))
	colour := getenv("NO_COLOR") == "" && getenv("TERM") != "dumb"

	if inTTY && outTTY && len(o.commands) == 0 {
		return runInteractive(o, stdin, stdout, stderr, colour)
	}
	if o.user != 0 && o.password == "" {
		usageError(stderr, fmt.Errorf("-u needs -p or %s when not interactive", PasswordEnv))
		return exitUsage
	}
	p := &printer{out: stdout, err: stderr, color: colour && outTTY, errColor: colour && errTTY}
	return runBatch(o, stdin, p)
}

func usageError(w io.Writer, err error) {
	fmt.Fprintf(w, "chatclient: %v\nRun chatclient -h for help.\n", err)
}
