package main

import (
	"bytes"
	"math/bits"
	"strconv"
	"sync/atomic"
	"time"
)

// A benchmark message body is "t=<stamp unixnano>;s=<sender>;c=<counter>;"
// padded with 'x' to the requested size. The stamp is the time the message
// was due on its sender's schedule at a fixed -rate, the time it was
// written flat out: end-to-end latency is measured from it. Sender and
// counter identify the message, for the duplicate check and the per-message
// loss check.

// appendBody appends a message body of at least size bytes.
func appendBody(dst []byte, sendNanos int64, sender int32, counter uint64, size int) []byte {
	start := len(dst)
	dst = append(dst, "t="...)
	dst = strconv.AppendInt(dst, sendNanos, 10)
	dst = append(dst, ";s="...)
	dst = strconv.AppendInt(dst, int64(sender), 10)
	dst = append(dst, ";c="...)
	dst = strconv.AppendUint(dst, counter, 10)
	dst = append(dst, ';')
	for len(dst)-start < size {
		dst = append(dst, 'x')
	}
	return dst
}

// parseBody extracts what appendBody wrote.
func parseBody(b []byte) (sendNanos int64, sender int32, counter uint64, ok bool) {
	field := func(prefix string) (int64, bool) {
		if !bytes.HasPrefix(b, []byte(prefix)) {
			return 0, false
		}
		b = b[len(prefix):]
		var v int64
		n := 0
		for n < len(b) && b[n] >= '0' && b[n] <= '9' && n < 19 {
			v = v*10 + int64(b[n]-'0')
			n++
		}
		if n == 0 || n == len(b) || b[n] != ';' {
			return 0, false
		}
		b = b[n+1:]
		return v, true
	}
	t, ok1 := field("t=")
	s, ok2 := field("s=")
	c, ok3 := field("c=")
	if !ok1 || !ok2 || !ok3 || s > 1<<31-1 {
		return 0, 0, 0, false
	}
	return t, int32(s), uint64(c), true
}

// Ledger counts what happened to the messages of one chatbench process.
// All fields are updated atomically from many goroutines.
type Ledger struct {
	Sent      atomic.Int64 // requests written
	SendErr   atomic.Int64 // requests that could not be written (run phase)
	DueUnsent atomic.Int64 // paced: messages due before the window's end never written
	Acked     atomic.Int64 // ACK errno 0
	AckErr    atomic.Int64 // ACK with errno != 0
	Limited   atomic.Int64 // of which errno 8 (server rate limit)
	Delivered atomic.Int64 // distinct messages received
	Dups      atomic.Int64 // a message id received twice by one recipient
	SeqDups   atomic.Int64 // a seq at or below the last one seen; a gseq seen twice by one member
	SeqGaps   atomic.Int64 // seqs skipped (should be zero)
	Foreign   atomic.Int64 // deliveries that are not benchmark messages
	Stale     atomic.Int64 // deliveries of messages stamped before since: an earlier run's
	ConnLost  atomic.Int64 // connections that ended during the run

	// Group logs (see groupTrack).
	Reorders    atomic.Int64 // group deliveries below a gseq already delivered, not seen before
	GSeqHoles   atomic.Int64 // open holes: gseqs neither delivered to nor sent by a member
	OwnGSeqs    atomic.Int64 // gseqs of members' own messages, from their GROUP_CHAT ACKs
	GSeqChecked atomic.Int64 // group deliveries checked by gseq (summed at drain)

	// Counts inside the measurement window, for rates.
	SentWin      atomic.Int64
	AckedWin     atomic.Int64
	DeliveredWin atomic.Int64

	// since: with users of an earlier run reused, when this run began
	// (unix nanos); messages stamped before it are Stale. 0: none.
	since atomic.Int64

	winStart atomic.Int64 // unix nanos; 0 = not started
	winEnd   atomic.Int64 // unix nanos; 0 = open

	// Latencies are measured from a message's stamp, for messages stamped
	// inside the window: at a fixed rate the stamp is the time the message
	// was due, so time it spent waiting to be sent (for an in-flight slot,
	// or for a late goroutine) counts, as it would for a user.
	Latency    *Histogram // stamp -> delivery
	AckLatency *Histogram // stamp -> ACK
	SendLag    *Histogram // paced: due -> written, messages due inside the window
}

// NewLedger returns an empty ledger.
func NewLedger() *Ledger {
	return &Ledger{Latency: NewHistogram(), AckLatency: NewHistogram(), SendLag: NewHistogram()}
}

// SetWindow sets the measurement window [start, end) in unix nanos; end 0
// leaves it open.
func (l *Ledger) SetWindow(start, end int64) {
	l.winStart.Store(start)
	l.winEnd.Store(end)
}

// inWindow reports whether t (unix nanos) lies in the window.
func (l *Ledger) inWindow(t int64) bool {
	s := l.winStart.Load()
	if s == 0 || t < s {
		return false
	}
	e := l.winEnd.Load()
	return e == 0 || t < e
}

// sent accounts a request written at now (the window's sent rate counts
// requests by when they were written).
func (l *Ledger) sent(now int64) {
	l.Sent.Add(1)
	if l.inWindow(now) {
		l.SentWin.Add(1)
	}
}

// lagged records how late a paced send was written: due is its time on the
// sender's schedule, now when it was written.
func (l *Ledger) lagged(due, now int64) {
	if l.inWindow(due) {
		l.SendLag.Record((now - due) / 1e3)
	}
}

func (l *Ledger) acked(sendNanos, now int64, errno int64) {
	if errno != 0 {
		l.AckErr.Add(1)
		if errno == 8 {
			l.Limited.Add(1)
		}
		return
	}
	l.Acked.Add(1)
	if l.inWindow(now) {
		l.AckedWin.Add(1)
	}
	if l.inWindow(sendNanos) {
		l.AckLatency.Record((now - sendNanos) / 1e3)
	}
}

// recvState is the per-recipient duplicate and order check, and the
// messages received (seen), which the drain compares with their senders'
// acked sets. The recipient connection's reader goroutine writes it.
type recvState struct {
	lastSeq int64
	seen    map[int32]*bitset // by sender, bit = counter
}

// observe accounts one inbox delivery: seq must continue the last one seen
// (contiguous from the first), and (sender, counter) must be new.
func (l *Ledger) observe(r *recvState, seq int64, body []byte, now int64) {
	switch {
	case seq <= 0:
	case r.lastSeq == 0 || seq == r.lastSeq+1:
		r.lastSeq = seq
	case seq <= r.lastSeq:
		l.SeqDups.Add(1)
	default:
		l.SeqGaps.Add(seq - r.lastSeq - 1)
		r.lastSeq = seq
	}
	l.account(r, body, now)
}

// groupTrack is one member's view of one group's log. Deliveries must come
// in increasing gseq order (a gseq seen before is a duplicate, a lower one
// not seen before a reorder), and the delivered gseqs together with the
// gseqs of the member's own messages (from its GROUP_CHAT ACKs, which race
// the deliveries of later messages) must cover the log from its start
// without holes. Holes are counted as they open and close, so the count
// after draining is the number of log positions the member never saw.
//
// Everything but checked belongs to the reader goroutine of the member's
// connection.
type groupTrack struct {
	lastDelivered int64
	cov           gseqSet
	checked       atomic.Int64 // deliveries observed; read at drain
}

// observeGroup accounts one delivery of group log position gseq.
func (l *Ledger) observeGroup(r *recvState, t *groupTrack, gseq int64, body []byte, now int64) {
	t.checked.Add(1) // uncontended: one writer
	added, holes := t.cov.add(gseq)
	switch {
	case !added:
		l.SeqDups.Add(1)
	case gseq < t.lastDelivered:
		l.Reorders.Add(1)
	}
	if holes != 0 {
		l.GSeqHoles.Add(holes)
	}
	t.lastDelivered = max(t.lastDelivered, gseq)
	l.account(r, body, now)
}

// ownGroupSeq accounts the gseq of a member's own message (from its ACK):
// the server does not deliver it to the member, so it fills that position.
func (l *Ledger) ownGroupSeq(t *groupTrack, gseq int64) {
	l.OwnGSeqs.Add(1)
	added, holes := t.cov.add(gseq)
	if !added {
		l.SeqDups.Add(1)
	}
	if holes != 0 {
		l.GSeqHoles.Add(holes)
	}
}

// account checks a delivery's message id (sender, counter) and records it.
func (l *Ledger) account(r *recvState, body []byte, now int64) {
	t, sender, counter, ok := parseBody(body)
	if !ok {
		l.Foreign.Add(1)
		return
	}
	if t < l.since.Load() {
		l.Stale.Add(1)
		return
	}
	if r.seen == nil {
		r.seen = map[int32]*bitset{}
	}
	bs := r.seen[sender]
	if bs == nil {
		bs = &bitset{}
		r.seen[sender] = bs
	}
	if !bs.testAndSet(counter) {
		l.Dups.Add(1)
		return
	}
	l.Delivered.Add(1)
	if l.inWindow(now) {
		l.DeliveredWin.Add(1)
	}
	if l.inWindow(t) {
		l.Latency.Record((now - t) / 1e3)
	}
}

// gseqSpan bounds how far above its contiguous prefix a gseqSet tracks
// (1 Mi positions, 128 KiB). Holes close within a round trip, so the span in
// use is a few words; a jump beyond it counts the positions skipped as holes
// for good and restarts the set there.
const gseqSpan = 1 << 20

// gseqSet is a set of log positions: every position below lo, plus a bit
// window above it that the prefix consumes as it closes, so it stays a few
// words long and allocates only when it grows.
type gseqSet struct {
	started bool
	lo      int64 // every position below lo is in the set
	hi      int64 // highest position in the set (lo-1 if none at or above lo)
	off     int64 // position of bit 0 of w[0]; a multiple of 64, <= lo
	w       []uint64
}

// init makes start the first position expected: the set then holds every
// position below start.
func (s *gseqSet) init(start int64) {
	s.started, s.lo, s.hi, s.off, s.w = true, start, start-1, start&^63, s.w[:0]
}

// add inserts g (> 0) and reports whether it is new, and by how much the
// number of holes (positions in [lo, hi] not in the set) changed. Before
// init, the first position added starts the set.
func (s *gseqSet) add(g int64) (added bool, holes int64) {
	if !s.started {
		s.init(g)
	}
	if g < s.lo {
		return false, 0
	}
	if g-s.off >= gseqSpan {
		holes = g - s.hi - 1
		s.init(g)
	}
	i := g - s.off
	k := int(i >> 6)
	for k >= len(s.w) {
		s.w = append(s.w, 0)
	}
	m := uint64(1) << (i & 63)
	if s.w[k]&m != 0 {
		return false, 0
	}
	s.w[k] |= m
	if g > s.hi {
		holes += g - s.hi - 1
		s.hi = g
	} else {
		holes--
	}
	if g == s.lo {
		s.advance()
	}
	return true, holes
}

// advance moves lo past the positions in the set and drops the words below
// it.
func (s *gseqSet) advance() {
	for {
		i := s.lo - s.off
		k := int(i >> 6)
		if k >= len(s.w) {
			break
		}
		b := int(i & 63)
		n := bits.TrailingZeros64(^(s.w[k] >> b)) // set bits from b up
		s.lo += int64(n)
		if n < 64-b {
			break
		}
	}
	if k := int((s.lo - s.off) >> 6); k > 0 {
		s.w = s.w[:copy(s.w, s.w[min(k, len(s.w)):])]
		s.off += int64(k) << 6
	}
}

// bitset is a growable set of small non-negative integers.
type bitset struct{ w []uint64 }

// count is the number of bits set.
func (b *bitset) count() int64 { return andNotCount(b.w, nil) }

// andNotCount is the number of bits set in a and clear in b.
func andNotCount(a, b []uint64) int64 {
	var n int
	for i, w := range a {
		if i < len(b) {
			w &^= b[i]
		}
		n += bits.OnesCount64(w)
	}
	return int64(n)
}

// testAndSet sets bit i and reports whether it was clear.
func (b *bitset) testAndSet(i uint64) bool {
	word := int(i / 64)
	if word >= len(b.w) {
		n := max(2*len(b.w), word+1)
		w := make([]uint64, n)
		copy(w, b.w)
		b.w = w
	}
	m := uint64(1) << (i % 64)
	if b.w[word]&m != 0 {
		return false
	}
	b.w[word] |= m
	return true
}

// LedgerCounts is the JSON form of a Ledger, mergeable across processes.
type LedgerCounts struct {
	Sent, SendErr, DueUnsent, Acked, AckErr, Limited, Delivered, Dups, SeqDups, SeqGaps, Foreign, Stale, ConnLost int64
	Reorders, GSeqHoles, OwnGSeqs, GSeqChecked                                                                    int64
	SentWin, AckedWin, DeliveredWin                                                                               int64
	Latency, AckLatency, SendLag                                                                                  HistSnapshot
}

// Counts snapshots l.
func (l *Ledger) Counts() LedgerCounts {
	return LedgerCounts{
		Sent: l.Sent.Load(), SendErr: l.SendErr.Load(), DueUnsent: l.DueUnsent.Load(), Acked: l.Acked.Load(), AckErr: l.AckErr.Load(), Limited: l.Limited.Load(),
		Delivered: l.Delivered.Load(), Dups: l.Dups.Load(), SeqDups: l.SeqDups.Load(), SeqGaps: l.SeqGaps.Load(),
		Foreign: l.Foreign.Load(), Stale: l.Stale.Load(), ConnLost: l.ConnLost.Load(),
		Reorders: l.Reorders.Load(), GSeqHoles: l.GSeqHoles.Load(), OwnGSeqs: l.OwnGSeqs.Load(), GSeqChecked: l.GSeqChecked.Load(),
		SentWin: l.SentWin.Load(), AckedWin: l.AckedWin.Load(), DeliveredWin: l.DeliveredWin.Load(),
		Latency: l.Latency.Snapshot(), AckLatency: l.AckLatency.Snapshot(), SendLag: l.SendLag.Snapshot(),
	}
}

// Add merges o into c.
func (c *LedgerCounts) Add(o LedgerCounts) {
	c.Sent += o.Sent
	c.SendErr += o.SendErr
	c.DueUnsent += o.DueUnsent
	c.Acked += o.Acked
	c.AckErr += o.AckErr
	c.Limited += o.Limited
	c.Delivered += o.Delivered
	c.Dups += o.Dups
	c.SeqDups += o.SeqDups
	c.SeqGaps += o.SeqGaps
	c.Foreign += o.Foreign
	c.Stale += o.Stale
	c.ConnLost += o.ConnLost
	c.Reorders += o.Reorders
	c.GSeqHoles += o.GSeqHoles
	c.OwnGSeqs += o.OwnGSeqs
	c.GSeqChecked += o.GSeqChecked
	c.SentWin += o.SentWin
	c.AckedWin += o.AckedWin
	c.DeliveredWin += o.DeliveredWin
	c.Latency.Merge(o.Latency)
	c.AckLatency.Merge(o.AckLatency)
	c.SendLag.Merge(o.SendLag)
}

// nowNanos is the clock used for send stamps and receive times.
func nowNanos() int64 { return time.Now().UnixNano() }
