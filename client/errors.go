package client

import (
	"errors"
	"fmt"

	"github.com/chatcluster/chatcluster/codec"
)

// Connection-level errors. They are immutable values, safe to share and to
// compare from any goroutine.
var (
	// ErrClosed is the cause reported by Err, and returned by pending and
	// later requests, after Close was called.
	ErrClosed = errors.New("client: closed")
	// ErrKicked is the cause reported by Err after the server sent KICKED
	// (the session was replaced by a login elsewhere). Err wraps it together
	// with the server's errmsg; test with errors.Is.
	ErrKicked = errors.New("client: kicked by server")
	// ErrProtocol is wrapped by every error about a server that broke the
	// protocol: an empty frame, a frame above Options.MaxFrame, a body that is
	// not a JSON object, or a response of the wrong type.
	ErrProtocol = errors.New("client: protocol error")
)

// ServerError is a response whose errno is not codec.OK. Values are
// immutable once returned and safe to share between goroutines.
type ServerError struct {
	// Ack is the msgid of the request that failed: the "ack" field of an ACK
	// response, or the request's msgid for LOGIN_ACK, SIGNUP_ACK and PONG.
	Ack codec.MsgID
	// Errno is the server's error code.
	Errno codec.Errno
	// ErrMsg is the server's human-readable message.
	ErrMsg string
}

// Error implements error.
func (e *ServerError) Error() string {
	return fmt.Sprintf("client: server error for msgid %d: errno %d (%s): %s", e.Ack, e.Errno, e.Errno, e.ErrMsg)
}

// Is reports whether target is a *ServerError with the same Errno and, when
// target.Ack is not zero, the same Ack. It makes errors.Is(err, ErrNotFound)
// and errors.Is(err, &ServerError{Errno: codec.ErrnoConflict}) work.
func (e *ServerError) Is(target error) bool {
	t, ok := target.(*ServerError)
	if !ok || t == nil {
		return false
	}
	return t.Errno == e.Errno && (t.Ack == 0 || t.Ack == e.Ack)
}

// Sentinels for errors.Is against a server errno; they match any *ServerError
// with that Errno whatever its Ack. Never modify them.
var (
	ErrAuth            = &ServerError{Errno: codec.ErrnoAuth, ErrMsg: codec.ErrnoAuth.String()}
	ErrBadRequest      = &ServerError{Errno: codec.ErrnoBadRequest, ErrMsg: codec.ErrnoBadRequest.String()}
	ErrNotLoggedIn     = &ServerError{Errno: codec.ErrnoNotLoggedIn, ErrMsg: codec.ErrnoNotLoggedIn.String()}
	ErrNotFound        = &ServerError{Errno: codec.ErrnoNotFound, ErrMsg: codec.ErrnoNotFound.String()}
	ErrForbidden       = &ServerError{Errno: codec.ErrnoForbidden, ErrMsg: codec.ErrnoForbidden.String()}
	ErrConflict        = &ServerError{Errno: codec.ErrnoConflict, ErrMsg: codec.ErrnoConflict.String()}
	ErrRateLimited     = &ServerError{Errno: codec.ErrnoRateLimited, ErrMsg: codec.ErrnoRateLimited.String()}
	ErrRequestTooLarge = &ServerError{Errno: codec.ErrnoFrameTooLarge, ErrMsg: codec.ErrnoFrameTooLarge.String()}
	ErrUnavailable     = &ServerError{Errno: codec.ErrnoUnavailable, ErrMsg: codec.ErrnoUnavailable.String()}
	ErrLimit           = &ServerError{Errno: codec.ErrnoLimit, ErrMsg: codec.ErrnoLimit.String()}
)

// NoErrno is what ErrnoOf returns for a non-nil error that is not a
// *ServerError (a transport, context or protocol error).
const NoErrno codec.Errno = -1

// ErrnoOf returns the server errno carried by err: codec.OK for nil, the
// Errno of the first *ServerError in err's chain, or NoErrno otherwise. It is
// a pure function, safe for concurrent use.
func ErrnoOf(err error) codec.Errno {
	if err == nil {
		return codec.OK
	}
	var se *ServerError
	if errors.As(err, &se) {
		return se.Errno
	}
	return NoErrno
}

func protocolErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrProtocol}, args...)...)
}
