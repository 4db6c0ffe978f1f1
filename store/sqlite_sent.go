package store

import (
	"context"
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"

	"github.com/jmoiron/sqlx"

	"github.com/chatcluster/chatcluster/codec"
)

// sentMemory is the writer's copy of the dedup keys in the two sent logs,
// which have no index (SQLite migration 4 dropped it): dedup looks keys up
// here before it asks sent, and a frozen log's ranges are cut and
// copied from here. With an index on (senderid, clientmsgid) every
// appended key dirtied a random leaf of it, one 4 KiB WAL frame each: 43
// of the 70 frames of a 60-message commit. Without it an append dirties the
// log's last page.
//
// Only the writer goroutine uses it, and it changes as the commit's
// statements run, before the commit is known to succeed. Every write of
// the pair's log_state row draws a new random gen, and the copy remembers
// the one its changes go with. At the start of every
// commit, verify compares it with the gen just read, and reloads both logs
// if they differ: after a failed commit (its appends and emptying undone)
// or another process's writes to the file.
//
// It holds at most both logs' rows: MergeRows keys each (~100 bytes a key
// with the map's overhead, and 16 more for a frozen log's keys sorted by
// sender as its ranges need them: ~7 MiB at the default), and none while
// idle.
type sentMemory struct {
	logs   [2]sentLogCopy
	gen    int64     // the log_state.gen the copy goes with, or unknownGen
	reload [2]string // reads a log
	insert sizedStmt // copies into sent, per chunk size
}

// sentLogCopy is the copy of one sent log, by sender: copying walks the
// senders in order, and only a sender's own keys are ever sorted (sorting
// all 32,768 keys of a frozen log at once held the writer up ~12 ms).
type sentLogCopy struct {
	keys    map[codec.UserID]map[string]int64 // created_ms by sender and clientmsgid
	senders []codec.UserID                    // the senders in order, built for copying; nil when stale
	// cmids holds senders' clientmsgids in order, sorted when a range
	// first needs them; reset with senders.
	cmids map[codec.UserID][]string
}

func newSentLogCopy() sentLogCopy {
	return sentLogCopy{keys: map[codec.UserID]map[string]int64{}}
}

func (l *sentLogCopy) add(r sentRow) {
	byID := l.keys[r.key.sender]
	if byID == nil {
		byID = map[string]int64{}
		l.keys[r.key.sender] = byID
	}
	byID[r.key.cmid] = r.ms
}

var _ rangeSource = (*sentMemory)(nil)

func newSentMemory() *sentMemory {
	m := &sentMemory{gen: unknownGen}
	for i := range m.logs {
		m.logs[i] = newSentLogCopy()
		m.reload[i] = "SELECT " + sentLog.cols + " FROM " + sentLog.name(i)
	}
	return m
}

// preps lists m's statements for prepareAll.
func (m *sentMemory) preps() []prepStmt {
	return m.insert.preps(func(n int) string {
		return "INSERT OR IGNORE INTO sent (" + sentLog.cols + ") VALUES " + placeholders(n, "(?, ?, ?)")
	})
}

// verify reloads both logs inside tx unless gen, the pair's log_state.gen
// as this commit read it, is the one the copy goes with.
func (m *sentMemory) verify(ctx context.Context, tx txn, gen int64) error {
	if gen == m.gen {
		return nil
	}
	for i := range m.logs {
		l := newSentLogCopy()
		rows, err := tx.QueryxContext(ctx, m.reload[i])
		err = scanRows(rows, err, func(rows rowScanner) error {
			var r sentRow
			err := rows.Scan(&r.key.sender, &r.key.cmid, &r.ms)
			l.add(r)
			return err
		})
		if err != nil {
			return fmt.Errorf("store: reload %s: %w", sentLog.name(i), err)
		}
		m.logs[i] = l
	}
	m.gen = gen
	return nil
}

// lookup returns the send time of k if either log holds it.
func (m *sentMemory) lookup(k dedupKey) (int64, bool) {
	for i := range m.logs {
		if ms, ok := m.logs[i].keys[k.sender][k.cmid]; ok {
			return ms, true
		}
	}
	return 0, false
}

// appended records rows just appended to log i.
func (m *sentMemory) appended(i int, rows []sentRow) {
	l := &m.logs[i]
	for _, r := range rows {
		l.add(r)
	}
	l.senders, l.cmids = nil, nil
	m.gen = unknownGen
}

// sendersFrom returns log i's senders in order, from the first whose id is
// at least from.
func (m *sentMemory) sendersFrom(i int, from int64) []codec.UserID {
	l := &m.logs[i]
	if l.senders == nil {
		l.senders = slices.Sorted(maps.Keys(l.keys))
	}
	p := sort.Search(len(l.senders), func(j int) bool { return int64(l.senders[j]) >= from })
	return l.senders[p:]
}

// cmidsFrom returns sender id's clientmsgids in log i in order, from the
// first at from on if id is from's sender.
func (m *sentMemory) cmidsFrom(i int, id codec.UserID, from logPos) []string {
	l := &m.logs[i]
	c, ok := l.cmids[id]
	if !ok {
		c = slices.Sorted(maps.Keys(l.keys[id])) // in sent's key order
		if l.cmids == nil {
			l.cmids = map[codec.UserID][]string{}
		}
		l.cmids[id] = c
	}
	if int64(id) == from.Key {
		p, _ := slices.BinarySearch(c, from.Cmid)
		c = c[p:]
	}
	return c
}

func (m *sentMemory) boundary(_ context.Context, _ txn, i int, from logPos, quota int64) (logPos, bool, error) {
	n := quota // rows left before the boundary
	for j, id := range m.sendersFrom(i, from.Key) {
		var c []string // the first sender's keys from from on
		left := int64(len(m.logs[i].keys[id]))
		if j == 0 {
			c = m.cmidsFrom(i, id, from)
			left = int64(len(c))
		}
		switch {
		case left <= n:
			n -= left
		case j > 0:
			return logPos{Key: int64(id)}, true, nil // whole senders only
		case left > 2*quota:
			return logPos{Key: int64(id), Cmid: c[quota]}, true, nil
		case int64(id) < math.MaxInt64:
			return logPos{Key: int64(id) + 1}, true, nil // the first sender whole
		default:
			return logPos{}, false, nil
		}
	}
	return logPos{}, false, nil
}

func (m *sentMemory) copyRange(ctx context.Context, tx txn, i int, from, to logPos, last bool) error {
	var rows []sentRow
	for _, id := range m.sendersFrom(i, from.Key) {
		if !last && int64(id) > to.Key {
			break
		}
		byID := m.logs[i].keys[id]
		for _, cmid := range m.cmidsFrom(i, id, from) {
			if !last && int64(id) == to.Key && cmid >= to.Cmid {
				break
			}
			rows = append(rows, sentRow{dedupKey{id, cmid}, byID[cmid]})
		}
	}
	// OR IGNORE only as a guard: each row is copied once.
	args := make([]any, 0, 3*chunkSizes[0])
	return m.insert.inChunks(ctx, tx, len(rows), func(st *sqlx.Stmt, lo, hi int) error {
		return execRows(ctx, st, sentArgs(args[:0], rows[lo:hi])...)
	})
}

func (m *sentMemory) cleared(i int) {
	m.logs[i] = newSentLogCopy()
	m.gen = unknownGen
}

// unknownGen is the gen of a copy changed by a commit not yet done (the
// writer sets the commit's gen once its log state is written); drawn gens
// are never negative.
const unknownGen = -1
