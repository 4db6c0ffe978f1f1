package main

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strconv"

	"github.com/chatcluster/chatcluster/client"
	"github.com/chatcluster/chatcluster/codec"
)

// Local errors of the session.
var (
	errNotLoggedIn = errors.New("not logged in")
	errLoggedIn    = errors.New("already logged in; type loginout first")
	errEnded       = errors.New("session closed")
	errConnLost    = errors.New("connection lost before the server answered; the request may not have been done")
	errReconnect   = errors.New("not connected (reconnecting); try again")
)

// friendly turns an error from the client package (or the session) into a
// short line for the user. Server errors are mapped by errno; the server's
// errmsg is added where it says something the errno does not.
func friendly(err error) string {
	if err == nil {
		return ""
	}
	var se *client.ServerError
	if errors.As(err, &se) {
		msg := sanitize(se.ErrMsg)
		withDetail := func(s string) string {
			if msg == "" || msg == se.Errno.String() {
				return s
			}
			return s + " (" + msg + ")"
		}
		withMsg := func(s string) string {
			if msg == "" {
				return s
			}
			return s + ": " + msg
		}
		switch se.Errno {
		case codec.ErrnoAuth:
			return "wrong id or password"
		case codec.ErrnoBadRequest:
			return withMsg("bad request")
		case codec.ErrnoNotLoggedIn:
			return "not logged in"
		case codec.ErrnoNotFound:
			return withDetail("no such user or group")
		case codec.ErrnoForbidden:
			return withDetail("not allowed: you are not a member")
		case codec.ErrnoConflict:
			return withMsg("already exists")
		case codec.ErrnoRateLimited:
			return "slow down: rate limited"
		case codec.ErrnoFrameTooLarge:
			return "message too large"
		case codec.ErrnoUnavailable:
			return "server unavailable, try again"
		case codec.ErrnoLimit:
			return withMsg("limit reached")
		}
		return withMsg("server error " + strconv.Itoa(int(se.Errno)))
	}
	var ne *net.OpError
	switch {
	case errors.Is(err, errNotLoggedIn), errors.Is(err, errLoggedIn), errors.Is(err, errEnded),
		errors.Is(err, errConnLost), errors.Is(err, errReconnect):
		return err.Error()
	case errors.Is(err, client.ErrKicked):
		return "logged in elsewhere; session closed"
	case errors.Is(err, context.DeadlineExceeded):
		return "no answer from the server in time"
	case errors.Is(err, context.Canceled):
		return "cancelled"
	case errors.Is(err, client.ErrProtocol):
		return "protocol error: " + sanitize(err.Error())
	case errors.Is(err, io.EOF), errors.Is(err, client.ErrClosed), errors.Is(err, net.ErrClosed):
		return "connection lost"
	case errors.As(err, &ne):
		return "connection lost"
	}
	return sanitize(err.Error())
}

// dialError describes a failed connect, e.g. "cannot connect to
// 127.0.0.1:6000: connection refused".
func dialError(addr string, err error) string {
	var sys *os.SyscallError
	var ne *net.OpError
	switch {
	case errors.As(err, &sys):
		err = sys.Err
	case errors.As(err, &ne) && ne.Err != nil:
		err = ne.Err
	}
	return "cannot connect to " + addr + ": " + sanitize(err.Error())
}

// isConnErr reports whether err is about the connection rather than an
// answer from the server.
func isConnErr(err error) bool {
	return err != nil && client.ErrnoOf(err) == client.NoErrno &&
		!errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) &&
		!errors.Is(err, errNotLoggedIn) && !errors.Is(err, errLoggedIn) && !errors.Is(err, errEnded) &&
		!errors.Is(err, errReconnect)
}
