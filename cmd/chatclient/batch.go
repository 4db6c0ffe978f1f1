package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"time"
)

// batchReconnectLimit bounds reconnecting in scripted use: a script should
// fail rather than hang.
const batchReconnectLimit = 30 * time.Second

// maxLine is the longest command line read from stdin.
const maxLine = 1 << 20

// runBatch runs the -c commands, or the lines of stdin, and exits: 0 if all
// succeeded, 1 otherwise.
func runBatch(o options, stdin io.Reader, p *printer) int {
	s := newSession(o, p, batchReconnectLimit)
	defer s.Close()
	a := &app{s: s, p: p}
	failed := false
	if o.user != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		err := a.login(ctx, "login", o.user, o.password)
		cancel()
		if err != nil {
			return exitFailed
		}
	}

	lines := make(chan string)
	readErr := make(chan error, 1)
	if len(o.commands) > 0 {
		go func() {
			defer close(lines)
			for _, c := range o.commands {
				lines <- c
			}
		}()
	} else {
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(stdin)
			sc.Buffer(make([]byte, 0, 4096), maxLine)
			for sc.Scan() {
				lines <- sc.Text()
			}
			readErr <- sc.Err()
		}()
	}

loop:
	for {
		if !s.LoggedIn() && s.EndErr() != nil {
			failed = true // logged in elsewhere, or could not reconnect
			break
		}
		var line string
		select {
		case l, ok := <-lines:
			if !ok {
				break loop
			}
			line = l
		case <-s.Ended():
			continue
		}
		cmd, err := Parse(line)
		if errors.Is(err, errEmpty) {
			continue
		}
		if err != nil {
			p.Error(err.Error())
			failed = true
			continue
		}
		if cmd.Kind == CmdQuit {
			break
		}
		ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		if a.execute(ctx, cmd) != nil {
			failed = true
		}
		cancel()
	}
	select {
	case err := <-readErr:
		if err != nil {
			p.Error("reading commands: " + err.Error())
			failed = true
		}
	default:
	}

	if s.LoggedIn() && o.wait > 0 {
		select {
		case <-time.After(o.wait):
		case <-s.Ended():
		}
	}
	if s.LoggedIn() {
		ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		if err := s.Flush(ctx); err != nil {
			a.report("exit", err)
			failed = true
		}
		cancel()
	}
	if !s.LoggedIn() && s.EndErr() != nil {
		failed = true
	}
	if failed {
		return exitFailed
	}
	return exitOK
}
