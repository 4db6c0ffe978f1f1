package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"

	"github.com/chatcluster/chatcluster/codec"
)

// baselineMain runs the connection-memory baseline: a plain
// goroutine-per-connection Go TCP server that reads frames through a 4 KiB
// bufio.Reader and answers every frame with a small frame. It prints
// "listening ADDR" on stdout once it accepts connections.
func baselineMain(args []string, stdout, stderr io.Writer) int {
	return listenMain("baseline-server", "127.0.0.1:6100", args, stdout, stderr, func(c net.Conn) {
		defer c.Close()
		readFrames(c, func([]byte) bool {
			_, err := c.Write(pongFrame)
			return err == nil
		})
	})
}

var pongFrame = codec.AppendFrame(nil, []byte(`{"msgid":14}`))

// listenMain runs chatbench's subcommand name: a server on a loopback
// address (-listen, default defAddr) that runs conn on a goroutine of its
// own for every connection. It prints "listening ADDR" on stdout once it
// accepts connections, and returns the exit code.
func listenMain(name, defAddr string, args []string, stdout, stderr io.Writer, conn func(net.Conn)) int {
	fs := flag.NewFlagSet("chatbench "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", defAddr, "TCP listen address")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if !loopback(*listen) {
		fmt.Fprintf(stderr, "chatbench %s: listen on a loopback address\n", name)
		return 2
	}
	raiseFileLimit()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(stderr, "chatbench %s: %v\n", name, err)
		return 1
	}
	fmt.Fprintf(stdout, "listening %s\n", ln.Addr())
	if f, ok := stdout.(interface{ Sync() error }); ok {
		_ = f.Sync()
	}
	return acceptLoop(name, ln, stderr, conn)
}

// acceptLoop accepts until ln is closed.
func acceptLoop(name string, ln net.Listener, stderr io.Writer, conn func(net.Conn)) int {
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return 0
			}
			fmt.Fprintf(stderr, "chatbench %s: accept: %v\n", name, err)
			continue
		}
		go conn(c)
	}
}

// readFrames reads frames from r through a 4 KiB bufio.Reader and calls fn
// with each body (its own copy) until fn returns false, r fails or a frame
// length is out of range.
func readFrames(r io.Reader, fn func(body []byte) bool) {
	br := bufio.NewReaderSize(r, 4096)
	var hdr [codec.HeaderLen]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return
		}
		n := codec.FrameLen(hdr[:])
		if n <= 0 || n > codec.DefaultMaxFrame {
			return
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(br, body); err != nil {
			return
		}
		if !fn(body) {
			return
		}
	}
}
