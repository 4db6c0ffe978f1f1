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
	fs := flag.NewFlagSet("chatbench baseline-server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:6100", "TCP listen address")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if !loopback(*listen) {
		fmt.Fprintln(stderr, "chatbench baseline-server: listen on a loopback address")
		return 2
	}
	raiseFileLimit()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(stderr, "chatbench baseline-server:", err)
		return 1
	}
	fmt.Fprintf(stdout, "listening %s\n", ln.Addr())
	if f, ok := stdout.(interface{ Sync() error }); ok {
		_ = f.Sync()
	}
	return serveBaseline(ln, stderr)
}

// serveBaseline accepts until ln is closed.
func serveBaseline(ln net.Listener, stderr io.Writer) int {
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
			fmt.Fprintln(stderr, "chatbench baseline-server: accept:", err)
			continue
		}
		go baselineConn(c)
	}
}

var pongFrame = codec.AppendFrame(nil, []byte(`{"msgid":14}`))

func baselineConn(c net.Conn) {
	defer c.Close()
	br := bufio.NewReaderSize(c, 4096)
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
		if _, err := c.Write(pongFrame); err != nil {
			return
		}
	}
}
