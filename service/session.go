package service

import (
	"sync"

	"github.com/chatcluster/chatcluster/codec"
)

// Transport is the service's view of one client connection. The server
// implements it; the service never sees the network.
type Transport interface {
	// Send queues one encoded frame for writing. Safe for concurrent use;
	// frames queued by one goroutine (or under one lock) are written in
	// the order queued.
	Send(frame []byte)
	// Close writes what was queued, then closes the connection. Safe for
	// concurrent use and idempotent.
	Close()
}

// Session is one client connection's state in the service. Its methods are
// safe for concurrent use: requests arrive on a worker, deliveries on the bus
// handler, and the close from the server.
//
// One Session is kept for every open connection, so it is kept small: the
// bools come last (one padded word for both), and the server embeds it in
// its own connection state (see Node.Attach).
type Session struct {
	t  Transport
	id string // unique session id, for presence and cross-node kicks

	sends sync.WaitGroup // chat sends waiting for their commit

	mu   sync.Mutex
	uid  codec.UserID // 0 until login
	name string
	// Delivery state for the logged-in user:
	sent    codec.Seq // highest seq queued on the transport
	known   codec.Seq // highest seq known to exist in the inbox
	gen     uint64    // bumped at each login/logout so a stale pump stops
	pumping bool      // a pump is reading the inbox up to known
	recheck bool      // a resync came while pumping: read the inbox once more
	closed  bool
}

// User returns the logged-in user's id and name, or 0 and "".
func (s *Session) User() (codec.UserID, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.uid, s.name
}

// appendDelivery appends d to out as one frame.
func appendDelivery(out []byte, d *codec.Delivery) []byte {
	frame := codec.MustMarshal(d)
	if out == nil {
		return frame
	}
	return append(out, frame...)
}

// endLoginLocked forgets the logged-in user; a running pump notices the new
// generation and stops. Called with s.mu held.
func (s *Session) endLoginLocked() {
	s.uid, s.name, s.pumping, s.recheck = 0, "", false, false
	s.gen++
}

// claimPump marks s as pumping and returns its login generation; it
// reports false when s is not logged in or a pump already runs (or a login
// is reading the inbox), which then reads the inbox once more before it
// stops: what the resync is for may have been committed after its read.
func (s *Session) claimPump() (uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.uid == 0 {
		return 0, false
	}
	if s.pumping {
		s.recheck = true
		return 0, false
	}
	s.pumping = true
	return s.gen, true
}

// needsPumpLocked ends a login's own inbox read (which found the backlog
// complete, or not): it reports whether a pump must still read the inbox.
// None is needed when LOGIN_ACK held the whole backlog, nothing was
// committed since and no resync came; an entry committed from then on is
// offered to the session, which writes it or starts a pump. Called with
// s.mu held.
func (s *Session) needsPumpLocked(complete bool) bool {
	if complete && s.sent >= s.known && !s.recheck {
		s.pumping = false
		return false
	}
	return true
}

// send marshals v and queues it.
func (s *Session) send(v any) { s.t.Send(codec.MustMarshal(v)) }

// offerLocked takes deliveries from the bus: writes them at once when they
// continue what was sent, and otherwise reports that a pump must read the
// inbox. Called with s.mu held.
func (s *Session) offerLocked(ds []codec.Delivery) (needPump bool) {
	if s.uid == 0 || s.closed || len(ds) == 0 {
		return false
	}
	last := ds[len(ds)-1].Seq
	if last > s.known {
		s.known = last
	}
	if s.pumping {
		return false
	}
	// One write for the whole run of frames: one syscall, not one each.
	var out []byte
	defer func() {
		if len(out) > 0 {
			s.t.Send(out)
		}
	}()
	for i := range ds {
		switch d := &ds[i]; {
		case d.Seq <= s.sent:
			continue // already written (a duplicate notice)
		case d.Seq == s.sent+1:
			out = appendDelivery(out, d)
			s.sent = d.Seq
		default:
			// A gap: an earlier entry's notice is late or was lost.
			s.pumping = true
			return true
		}
	}
	if s.known > s.sent {
		s.pumping = true
		return true
	}
	return false
}
