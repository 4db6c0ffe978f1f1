package service

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/chatcluster/chatcluster/codec"
)

// Transport is the service's view of one client connection. The server
// implements it; the service never sees the network.
type Transport interface {
	// Send queues one encoded frame for writing. Safe for concurrent use;
	// frames queued by one goroutine (or under one lock) are written in
	// the order queued. It must not change frame, which may be shared by
	// several connections (a group message's one encoding).
	Send(frame []byte)
	// WaitOutbound blocks until fewer than below bytes wait to be written
	// to the client, and returns nil; or it returns an error when the
	// connection closes or ctx ends first. A pump calls it before it
	// writes more of a backlog, so that a client catching up at its own
	// pace is not closed as a slow consumer. Safe for concurrent use.
	WaitOutbound(ctx context.Context, below int) error
	// Unsent returns about how many bytes wait to be written to the
	// client, without waiting: never less than what waits, but it may
	// lag behind writes since (WaitOutbound brings it up to date). A
	// session writes no more live deliveries to a client with PumpWindow
	// unsent, and lets its pump send them at the client's pace. Safe for
	// concurrent use.
	Unsent() int
	// Close writes what was queued, then closes the connection. Safe for
	// concurrent use and idempotent. It must not call Node.Closed itself
	// (the server calls it later, on a goroutine of its own): a login
	// closes the session it replaces while it holds that user's lock.
	Close()
}

// stream is a session's delivery state for one stream of the user: the
// inbox (numbered by seq) or one group's log (numbered by gseq).
type stream struct {
	sent    codec.Seq // highest seq written to the transport (or passed over: own group messages)
	known   codec.Seq // highest seq known to exist in the stream
	pumping bool      // the stream is read from the store up to known (by the pump, or a login or join first)
	queued  bool      // the session's pump is to read the stream (pumping, position known)
	recheck bool      // a resync came while pumping: read the stream once more
}

// Session is one client connection's state in the service. Its methods are
// safe for concurrent use: requests arrive on a worker, deliveries on the bus
// handler, and the close from the server.
//
// One Session is kept for every open connection, so it is kept small: the
// group streams are allocated only for a user in groups, the bools come
// last, and the server embeds it in its own connection state (see
// Node.Attach).
type Session struct {
	t Transport

	sends       sync.WaitGroup // chat sends waiting for their commit
	sendingHeld atomic.Int64   // what they hold (sendCost)

	mu   sync.Mutex
	uid  codec.UserID // 0 until login
	name string
	// id names the session's current (or last) login in presence and in
	// cross-node kicks: a new one at each login, so that whatever is still
	// pending for an earlier login on the same connection (a presence
	// delete being retried, a kick) cannot touch a later one.
	id loginID
	// Delivery state for the logged-in user:
	inbox  stream
	groups map[codec.GroupID]*stream // one per group the user is in
	gen    uint32                    // bumped at each login/logout so a stale pump stops (wraps harmlessly)
	// loggingIn: the login has not read the user's groups yet, so a group
	// delivery for an unknown group gets a held-back stream.
	loggingIn bool
	closed    bool
	// pumpOn: the session's pump runs for login generation gen. One pump
	// reads every queued stream of the session in turn, so one client's
	// catching up is one goroutine, one wait on its connection and one
	// window, however many groups it is in.
	pumpOn bool
}

// User returns the logged-in user's id and name, or 0 and "".
func (s *Session) User() (codec.UserID, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.uid, s.name
}

// appendDelivery appends d to out as one frame.
func appendDelivery(out []byte, d *codec.Delivery) []byte { return codec.AppendFrameOf(out, d) }

// streamKey returns the stream a delivery belongs to (0: the inbox) and
// its position in it.
func streamKey(d *codec.Delivery) (codec.GroupID, codec.Seq) {
	if d.GSeq > 0 {
		return d.GroupID, d.GSeq
	}
	return 0, d.Seq
}

// streamLocked returns the state of stream key (0: the inbox), or nil for a
// group the session does not follow. Called with s.mu held.
func (s *Session) streamLocked(key codec.GroupID) *stream {
	if key == 0 {
		return &s.inbox
	}
	return s.groups[key]
}

// holdGroupLocked returns group g's stream, creating it held back (pumping,
// position unknown) when the session does not follow g yet; whoever
// created it sets its position and starts its pump (login, join). Called
// with s.mu held.
func (s *Session) holdGroupLocked(g codec.GroupID) *stream {
	if st := s.groups[g]; st != nil {
		return st
	}
	if s.groups == nil {
		s.groups = map[codec.GroupID]*stream{}
	}
	st := &stream{pumping: true}
	s.groups[g] = st
	return st
}

// endLoginLocked forgets the logged-in user; a running pump notices the new
// generation and stops. Called with s.mu held.
// kickLocked ends s's login, if any, with KICKED; it reports whether it
// did, and then the caller closes s's transport (after unlocking s.mu).
func (s *Session) kickLocked() bool {
	if s.uid == 0 {
		return false
	}
	s.endLoginLocked()
	s.send(&codec.Kicked{MsgID: codec.MsgKicked, ErrMsg: "logged in elsewhere"})
	return true
}

func (s *Session) endLoginLocked() {
	s.uid, s.name, s.inbox, s.groups, s.loggingIn = 0, "", stream{}, nil, false
	s.newGenLocked()
}

// newGenLocked starts a login generation: a pump of the last one stops at
// its next look, and the new one's streams get a pump of their own.
// Called with s.mu held.
func (s *Session) newGenLocked() {
	s.gen++
	s.pumpOn = false
}

// queuePumpsLocked hands streams keys, pumping with their positions
// known, to the session's pump for generation gen; it reports whether the
// caller must start that pump (go Node.pump). Called with s.mu held.
func (s *Session) queuePumpsLocked(gen uint32, keys ...codec.GroupID) (start bool) {
	if s.gen != gen || s.uid == 0 {
		return false
	}
	queued := false
	for _, key := range keys {
		if st := s.streamLocked(key); st != nil && st.pumping {
			st.queued, queued = true, true
		}
	}
	if !queued || s.pumpOn {
		return false
	}
	s.pumpOn = true
	return true
}

// nextQueuedLocked returns the queued stream the pump reads next: the
// first key after last, in key order, wrapping round (0, the inbox,
// first), so that one long backlog does not hold the others back. Called
// with s.mu held.
func (s *Session) nextQueuedLocked(last codec.GroupID) (codec.GroupID, bool) {
	first, next := codec.GroupID(-1), codec.GroupID(-1)
	consider := func(k codec.GroupID) {
		if first < 0 || k < first {
			first = k
		}
		if k > last && (next < 0 || k < next) {
			next = k
		}
	}
	if s.inbox.queued {
		consider(0)
	}
	for k, st := range s.groups {
		if st.queued {
			consider(k)
		}
	}
	switch {
	case next >= 0:
		return next, true
	case first >= 0:
		return first, true
	}
	return 0, false
}

// claimStreams claims streams keys of the session, or all of them when
// none is named (a resync), for the session's pump: each one not being
// read is marked pumping and queued; one that a pump (or a login or join)
// is reading already is read once more before it stops, since what the
// claim is for may have been committed after that read. A stream the
// session does not follow is passed over. It returns the login
// generation, whether the caller must start the pump (go Node.pump), and
// how many streams it claimed.
func (s *Session) claimStreams(keys ...codec.GroupID) (gen uint32, start bool, claimed int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.uid == 0 {
		return 0, false, 0
	}
	claim := func(key codec.GroupID, st *stream) {
		if st == nil {
			return
		}
		if st.pumping {
			st.recheck = true
			return
		}
		st.pumping = true
		claimed++
		start = s.queuePumpsLocked(s.gen, key) || start
	}
	if len(keys) > 0 {
		for _, key := range keys {
			claim(key, s.streamLocked(key))
		}
	} else {
		claim(0, &s.inbox)
		for g, st := range s.groups {
			claim(g, st)
		}
	}
	return s.gen, start, claimed
}

// needsPumpLocked ends a login's own inbox read (which found the backlog
// complete, or not): it reports whether a pump must still read the inbox.
// None is needed when LOGIN_ACK held the whole backlog, nothing was
// committed since and no resync came; an entry committed from then on is
// offered to the session, which writes it or starts a pump. Called with
// s.mu held.
func (s *Session) needsPumpLocked(complete bool) bool {
	st := &s.inbox
	if complete && st.sent >= st.known && !st.recheck {
		st.pumping = false
		return false
	}
	return true
}

// setGroupLocked ends the hold on group g's stream (see holdGroupLocked):
// the member has acknowledged (or joined at) acked, and the log ends at
// last. It reports whether a pump must read the log. Called with s.mu held.
func (s *Session) setGroupLocked(g codec.GroupID, acked, last codec.Seq) (pump bool) {
	st := s.holdGroupLocked(g)
	st.sent = acked
	st.known = max(st.known, last)
	if st.known > st.sent || st.recheck {
		return true // stays pumping: the caller runs the pump
	}
	st.pumping = false
	return false
}

// send marshals v and queues it.
func (s *Session) send(v any) { s.t.Send(codec.MustMarshal(v)) }

// offerLocked takes deliveries from the bus: writes each at once when it
// continues what was sent on its stream, and otherwise returns the stream
// among those a pump must read. A client with window bytes or more unsent
// (Transport.Unsent) is written nothing: the streams go to the pump, which
// reads them from the store at the client's pace, so a burst to a client
// that reads is not what closes it as a slow consumer. Called with s.mu
// held.
func (s *Session) offerLocked(ds []codec.Delivery, window int) (pumps []codec.GroupID) {
	if s.uid == 0 || s.closed || len(ds) == 0 {
		return nil
	}
	behind := s.t.Unsent() >= window
	// One write for the whole run of frames: one syscall, not one each.
	var out []byte
	defer func() {
		if len(out) > 0 {
			s.t.Send(out)
		}
	}()
	var touched []codec.GroupID // streams that took a delivery, in first-seen order
	for i := range ds {
		d := &ds[i]
		key, seq := streamKey(d)
		st := s.streamLocked(key)
		if st == nil {
			if !s.loggingIn {
				continue // not a group of this session's user
			}
			st = s.holdGroupLocked(key)
		}
		if seq > st.known {
			st.known = seq
		}
		if st.pumping {
			continue
		}
		switch {
		case seq <= st.sent:
			continue // already written (a duplicate notice)
		case seq == st.sent+1 && (behind || len(out) >= window):
			st.pumping = true
			pumps = append(pumps, key)
		case seq == st.sent+1:
			if key == 0 || d.ID != s.uid {
				out = appendDelivery(out, d)
			} // else: the user's own group message, passed over
			st.sent = seq
			if !slices.Contains(touched, key) {
				touched = append(touched, key)
			}
		default:
			// A gap: an earlier entry's notice is late or was lost.
			st.pumping = true
			pumps = append(pumps, key)
		}
	}
	for _, key := range touched {
		if st := s.streamLocked(key); !st.pumping && st.known > st.sent {
			st.pumping = true
			pumps = append(pumps, key)
		}
	}
	return pumps
}
