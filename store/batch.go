package store

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/service"
)

// sendOp is one queued send, or (acks != nil) acknowledgements to record;
// done runs on the batcher goroutine.
type sendOp struct {
	req  service.SendRequest
	acks map[service.AckKey]codec.Seq
	done func(service.SendResult, error)
}

// batcher is the group-commit writer: a goroutine per lane takes every send
// queued on its lane and commits them in one transaction. SQLite has one
// lane (one writer at a time). MySQL has Config.Writers lanes, each
// committing on its own connection, so one lane's round trips overlap
// another's; a sender's sends always take the same lane (laneOf), so they
// commit in the order sent and their ACKs come back in that order. Lanes
// may allocate seqs for the same recipient (or gseqs for the same group):
// the row lock makes the second wait for the first's COMMIT, and each
// commit's post-commit work runs in the order of tickets taken just before
// the COMMITs (ticket, postLoop), so deliveries and ACKs follow commit
// order across lanes.
type batcher struct {
	s        *Store
	maxBatch int
	lanes    []chan *sendOp
	post     chan posted // post-commit work, released in ticket order
	ticketMu sync.Mutex
	tickets  uint64 // the next ticket; guarded by ticketMu
	quit     chan struct{}
	writers  sync.WaitGroup // the lanes' goroutines
	stopped  chan struct{}  // closed when the last post-commit work is done
	hookMu   sync.RWMutex
	hook     func([]service.Entry)
	// closeMu makes enqueueing and closing exclusive, so that no op is
	// queued after the final drain.
	closeMu sync.RWMutex
	closed  bool
	// ownThread: the lane's writer runs on a thread of its own with a
	// raised priority (SQLite, WriterPriority not negative, Linux).
	// thread is that thread, set before the first commit; threadSet is
	// closed then (at once without ownThread).
	ownThread bool
	thread    writerThread
	threadSet chan struct{}
}

// writerThread is the OS thread the SQLite writer runs on: its id, its
// nice value and why that is not Config.WriterPriority levels above the
// process's (err). tid is 0 where the writer has no thread of its own
// (WriterPriority negative, or not Linux).
type writerThread struct {
	tid, nice int
	err       error
}

func newBatcher(s *Store, maxBatch, lanes int) *batcher {
	b := &batcher{
		s:         s,
		maxBatch:  maxBatch,
		lanes:     make([]chan *sendOp, lanes),
		post:      make(chan posted, 8),
		quit:      make(chan struct{}),
		stopped:   make(chan struct{}),
		ownThread: s.dialect.name == "sqlite" && s.cfg.WriterPriority >= 0 && threadPriorities,
		threadSet: make(chan struct{}),
	}
	if !b.ownThread {
		close(b.threadSet)
	}
	for i := range b.lanes {
		b.lanes[i] = make(chan *sendOp, 4*maxBatch)
		b.writers.Add(1)
		go b.run(b.lanes[i])
	}
	go func() {
		b.writers.Wait()
		close(b.post)
	}()
	go b.postLoop()
	return b
}

// laneOf is the lane of op: its sender's (acknowledgements: the first).
func (b *batcher) laneOf(op *sendOp) chan *sendOp {
	if op.acks != nil {
		return b.lanes[0]
	}
	return b.lanes[uint64(op.req.From)%uint64(len(b.lanes))]
}

// postLoop runs, in commit order, what follows each commit: the commit hook
// (deliveries) and the ops' callbacks (ACKs). It runs beside the writer, so
// the next transaction starts while this one's results are encoded.
func (b *batcher) postLoop() {
	defer close(b.stopped)
	waiting := map[uint64]func(){} // arrived before an earlier ticket
	next := uint64(0)
	for p := range b.post {
		waiting[p.ticket] = p.fn
		for {
			fn, ok := waiting[next]
			if !ok {
				break
			}
			delete(waiting, next)
			next++
			if fn != nil {
				fn()
			}
		}
	}
}

// posted is post-commit work with its ticket; fn is nil for a ticket taken
// by a COMMIT that failed.
type posted struct {
	ticket uint64
	fn     func()
}

// ticket numbers post-commit work. A lane takes one just before each
// COMMIT (on MySQL: before the round trip that carries it; and for a
// failed batch's reports): a lane that waited for
// another's row lock can only take its ticket after the other's COMMIT,
// so after the other's ticket.
func (b *batcher) ticket() uint64 {
	b.ticketMu.Lock()
	defer b.ticketMu.Unlock()
	t := b.tickets
	b.tickets++
	return t
}

// skip releases a ticket whose COMMIT failed.
func (b *batcher) skip(t uint64) { b.post <- posted{t, nil} }

func (b *batcher) close() {
	b.closeMu.Lock()
	if !b.closed {
		b.closed = true
		close(b.quit)
	}
	b.closeMu.Unlock()
	<-b.stopped
}

// SetCommitHook implements service.Store.
func (s *Store) SetCommitHook(fn func([]service.Entry)) {
	s.batcher.hookMu.Lock()
	s.batcher.hook = fn
	s.batcher.hookMu.Unlock()
}

// Send implements service.Store.
func (s *Store) Send(ctx context.Context, req service.SendRequest) (service.SendResult, error) {
	type outcome struct {
		res service.SendResult
		err error
	}
	ch := make(chan outcome, 1)
	s.SendAsync(ctx, req, func(res service.SendResult, err error) { ch <- outcome{res, err} })
	o := <-ch
	return o.res, o.err
}

// SendAsync implements service.Store. It blocks only while the commit queue
// is full (backpressure); once queued, the op is committed or failed whatever
// happens to ctx, and done always runs exactly once.
func (s *Store) SendAsync(ctx context.Context, req service.SendRequest, done func(service.SendResult, error)) {
	s.enqueue(ctx, &sendOp{req: req, done: done})
}

// TrySendAsync implements service.Store.
func (s *Store) TrySendAsync(req service.SendRequest, done func(service.SendResult, error)) bool {
	return s.batcher.put(context.Background(), &sendOp{req: req, done: done}, false) == nil
}

// ackChunk is the most users whose acknowledgements one MySQL statement
// (its own transaction) records.
const ackChunk = 200

// Ack implements service.Store. On SQLite acknowledgements ride in the next
// group commit: a second writer would queue behind the commit's lock. On
// MySQL they are written beside the group commits, into inbox_ack, ackChunk
// rows per autocommitted statement: no group commit locks those rows (it
// locks inbox_state), so neither waits for the other. (Written into
// inbox_state, every second's flush held up the commits that allocated
// seqs for the same users: p99 ~100 ms at 2,000 msg/s in a 2-node cluster.)
func (s *Store) Ack(ctx context.Context, acks map[service.AckKey]codec.Seq) error {
	if len(acks) == 0 {
		return nil
	}
	if w, ok := s.writer.(multiRowWriter); ok {
		users, groups := splitAcks(acks)
		err := w.ackChunks(ctx, s, users)
		if gerr := s.ackGroupsChunked(ctx, s.db, groups); err == nil {
			err = unavailable(gerr)
		}
		return err
	}
	ch := make(chan error, 1)
	s.enqueue(ctx, &sendOp{acks: acks, done: func(_ service.SendResult, err error) { ch <- err }})
	return <-ch
}

func (s *Store) enqueue(ctx context.Context, op *sendOp) {
	if err := s.batcher.put(ctx, op, true); err != nil {
		op.done(service.SendResult{}, fmt.Errorf("%w: %v", service.ErrUnavailable, err))
	}
}

// errLaneFull: put did not wait for room on a full lane.
var errLaneFull = errors.New("store: commit queue full")

// put queues op on its lane: ErrClosed after close; on a full lane, with
// wait it waits for room until ctx is done (ctx's error), without it
// errLaneFull. Safe to call concurrently.
func (b *batcher) put(ctx context.Context, op *sendOp, wait bool) error {
	b.closeMu.RLock()
	defer b.closeMu.RUnlock()
	if b.closed {
		return ErrClosed
	}
	lane := b.laneOf(op)
	if !wait {
		select {
		case lane <- op:
			return nil
		default:
			return errLaneFull
		}
	}
	select {
	case lane <- op:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run commits the sends queued on lane ops until close.
func (b *batcher) run(ops chan *sendOp) {
	defer b.writers.Done()
	if !b.ownThread {
		b.commitLoop(ops)
		return
	}
	runOnOwnThread(func() {
		b.prioritize()
		b.commitLoop(ops)
	})
}

// commitLoop is run's loop.
func (b *batcher) commitLoop(ops chan *sendOp) {
	batch := make([]*sendOp, 0, 1024)
	for {
		select {
		case op := <-ops:
			batch = append(batch[:0], op)
		case <-b.quit:
			// Commit what is still queued, then stop.
			for {
				select {
				case op := <-ops:
					batch = append(batch[:0], op)
					b.commit(batch, b.drain(ops, &batch))
				default:
					return
				}
			}
		}
		b.commit(batch, b.drain(ops, &batch))
	}
}

// prioritize raises the priority of the SQLite writer's thread, which it
// runs on alone (runOnOwnThread), Config.WriterPriority nice levels above
// the process (see there), and records the outcome in b.thread.
func (b *batcher) prioritize() {
	defer close(b.threadSet)
	levels := b.s.cfg.WriterPriority
	tid, nice, err := raiseThreadPriority(levels)
	b.thread = writerThread{tid: tid, nice: nice, err: err}
	if err != nil {
		b.s.log.Info("sqlite writer priority not raised as far as asked: that needs root, CAP_SYS_NICE or RLIMIT_NICE (systemd: LimitNICE=)",
			"levels", levels, "nice", nice, "err", err)
		return
	}
	b.s.log.Debug("sqlite writer priority raised", "levels", levels, "nice", nice)
}

// drain adds ops queued on the lane to batch until its weight (see rows)
// reaches maxBatch or the lane is empty, and returns the weight.
func (b *batcher) drain(ops chan *sendOp, batch *[]*sendOp) int {
	rows := 0
	for _, op := range *batch {
		rows += op.rows()
	}
	for rows < b.maxBatch {
		select {
		case op := <-ops:
			*batch = append(*batch, op)
			rows += op.rows()
		default:
			return rows
		}
	}
	return rows
}

// rows is the op's weight in a batch: a one-to-one message's inbox rows
// (at least 1). A group message is one log row, but one entry per member
// for the commit hook, so it weighs 1 plus an eighth of its recipients (a
// 100-member group: 13).
func (op *sendOp) rows() int {
	if op.req.Group != 0 {
		return 1 + len(op.req.To)/8
	}
	return max(1, len(op.req.To))
}

// commit stores a batch of weight rows in one transaction and reports to
// every op.
func (b *batcher) commit(batch []*sendOp, rows int) {
	// On SQLite a commit runs without a deadline: the driver would watch a
	// cancellable context with a goroutine per statement, and interrupting a
	// local commit only fails every send in it (a locked database waits
	// busy_timeout anyway).
	ctx, cancel := context.Background(), context.CancelFunc(func() {})
	if b.s.dialect.name != "sqlite" {
		ctx, cancel = context.WithTimeout(ctx, b.s.cfg.QueryTimeout)
	}
	defer cancel()
	var (
		results []service.SendResult
		entries []service.Entry
	)
	store := func(tx txn) error {
		var err error
		results, entries, err = b.s.storeBatch(ctx, tx, batch)
		return err
	}
	t0 := time.Now()
	var (
		t   uint64
		err error
	)
	if b.s.wdb != nil {
		t, results, entries, err = b.s.commitMySQL(ctx, batch, b.ticket, b.skip)
	}
	if b.s.wdb == nil || errors.Is(err, errKeyStoredBefore) {
		t, err = b.s.writer.inTx(ctx, b.s, store, b.ticket, b.skip)
	}
	b.s.log.Debug("group commit", "ops", len(batch), "took", time.Since(t0))
	if err != nil && isConflict(err) {
		// A clientmsgid committed meanwhile by another node: the retry's
		// dedup query now sees it.
		t, err = b.s.writer.inTx(ctx, b.s, store, b.ticket, b.skip)
	}
	ops := slices.Clone(batch) // batch is reused by run
	if err != nil {
		b.s.log.Warn("group commit failed", "sends", len(batch), "err", err)
		err = unavailable(err)
		b.post <- posted{b.ticket(), func() {
			for _, op := range ops {
				op.done(service.SendResult{}, err)
			}
		}}
		return
	}
	if b.s.ckpt != nil {
		b.s.ckpt.committed.Add(int64(rows))
	}
	b.hookMu.RLock()
	hook := b.hook
	b.hookMu.RUnlock()
	b.post <- posted{t, func() {
		if len(entries) > 0 && hook != nil {
			hook(entries)
		}
		for i, op := range ops {
			op.done(results[i], nil)
		}
	}}
}

type dedupKey struct {
	sender codec.UserID
	cmid   string
}

// sentRow is a dedup key to record, with its send's time.
type sentRow struct {
	key dedupKey
	ms  int64
}

// storeBatch writes a batch inside tx: dedup by clientmsgid, seq allocation
// for every recipient of a one-to-one message and for every group, inbox
// rows and group log rows. It returns one result per op and the new entries
// in op order (so per recipient in seq order, per group in gseq order).
func (s *Store) storeBatch(ctx context.Context, tx txn, batch []*sendOp) ([]service.SendResult, []service.Entry, error) {
	if err := s.writer.begin(ctx, tx); err != nil {
		return nil, nil, err
	}
	// 1. Which clientmsgids were stored before, or repeat within the batch?
	p := newBatchPlan(batch)
	var stored map[dedupKey]int64
	if len(p.sent) > 0 {
		var err error
		if stored, err = s.writer.dedup(ctx, tx, p.sent); err != nil {
			return nil, nil, err
		}
	}
	// 2. Count inbox rows per recipient and log rows per group, and
	// allocate seqs.
	p.count(stored)
	if err := s.ackGroupsChunked(ctx, tx, p.gacks); err != nil {
		return nil, nil, err
	}
	var next map[codec.UserID]codec.Seq
	if len(p.counts) > 0 || len(p.acks) > 0 {
		var err error
		if next, err = s.writer.allocSeqs(ctx, tx, p.counts, p.acks); err != nil {
			return nil, nil, err
		}
	}
	gnext, err := s.allocGroupSeqs(ctx, tx, p.gcounts)
	if err != nil {
		return nil, nil, err
	}
	// 3. The rows, and the entries for the commit hook.
	r := p.rows(next, gnext)
	if len(r.inbox) > 0 {
		if err := s.writer.insertInbox(ctx, tx, r.inbox, r.created); err != nil {
			return nil, nil, err
		}
	}
	if err := insertGroupLog(ctx, tx, r.log); err != nil {
		return nil, nil, err
	}
	if err := s.writer.merge(ctx, tx, len(r.inbox), p.newKeys); err != nil {
		return nil, nil, err
	}
	return p.results, r.entries, nil
}

// batchPlan is what a group commit works out between its statements: which
// ops repeat a clientmsgid, how many seqs each recipient and group needs,
// and then the rows and results.
type batchPlan struct {
	batch   []*sendOp
	results []service.SendResult
	// dup[i] is -1 for a new send, j ≥ 0 for a repeat of op j in the batch,
	// -2 for a repeat of a send stored earlier, -3 for acknowledgements.
	dup     []int
	first   map[dedupKey]int // the op that brought each key first
	sent    []sentRow        // the batch's keys, each once
	acks    map[codec.UserID]codec.Seq
	gacks   map[service.AckKey]codec.Seq
	counts  map[codec.UserID]int64  // inbox rows per recipient (count)
	gcounts map[codec.GroupID]int64 // log rows per group (count)
	newKeys int                     // keys to record (count)
	// The sizes of rows' slices (count): inbox rows, log rows, and hook
	// entries (an inbox row each, and a group message's members and sender).
	nInbox, nLog, nEntries int
}

func newBatchPlan(batch []*sendOp) *batchPlan {
	p := &batchPlan{
		batch:   batch,
		results: make([]service.SendResult, len(batch)),
		dup:     make([]int, len(batch)),
		first:   make(map[dedupKey]int, len(batch)),
		sent:    make([]sentRow, 0, len(batch)),
		acks:    map[codec.UserID]codec.Seq{},
		gacks:   map[service.AckKey]codec.Seq{},
	}
	for i, op := range batch {
		p.dup[i] = -1
		if op.acks != nil {
			p.dup[i] = -3
			for k, seq := range op.acks {
				if k.Group != 0 {
					p.gacks[k] = max(p.gacks[k], seq)
				} else {
					p.acks[k.User] = max(p.acks[k.User], seq)
				}
			}
			continue
		}
		if op.req.ClientMsgID == "" {
			continue
		}
		k := dedupKey{op.req.From, op.req.ClientMsgID}
		if j, ok := p.first[k]; ok {
			p.dup[i] = j
			continue
		}
		p.first[k] = i
		p.sent = append(p.sent, sentRow{k, op.req.UnixMilli})
	}
	return p
}

// count marks the sends whose key was stored before (stored: the stored
// time of each), then counts the rows the others need.
func (p *batchPlan) count(stored map[dedupKey]int64) {
	for k, ms := range stored {
		i := p.first[k]
		p.dup[i] = -2
		p.results[i] = service.SendResult{UnixMilli: ms, Duplicate: true}
	}
	p.newKeys = len(p.sent) - len(stored)
	p.counts = map[codec.UserID]int64{}
	p.gcounts = map[codec.GroupID]int64{}
	for i, op := range p.batch {
		if p.dup[i] != -1 {
			continue
		}
		p.results[i] = service.SendResult{UnixMilli: op.req.UnixMilli}
		if op.req.Group != 0 {
			p.gcounts[op.req.Group]++
			p.nLog++
			p.nEntries += len(op.req.To) + 1
			continue
		}
		for _, to := range op.req.To {
			p.counts[to]++
		}
		p.nInbox += len(op.req.To)
		p.nEntries += len(op.req.To)
	}
}

// planRows are the rows a commit inserts, and the entries for the commit
// hook.
type planRows struct {
	entries []service.Entry
	inbox   []service.Entry
	created []int64 // created_ms of each inbox entry
	log     []groupLogRow
}

// rows gives each new send its seqs (next: each recipient's first; gnext:
// each group's first gseq) and fills in the results.
func (p *batchPlan) rows(next map[codec.UserID]codec.Seq, gnext map[codec.GroupID]codec.Seq) planRows {
	// Sized up front (count): a commit carries thousands of entries, and
	// growing the slices by doubling copied each entry about twice more.
	r := planRows{
		entries: make([]service.Entry, 0, p.nEntries),
		inbox:   make([]service.Entry, 0, p.nInbox),
		created: make([]int64, 0, p.nInbox),
		log:     make([]groupLogRow, 0, p.nLog),
	}
	for i, op := range p.batch {
		if p.dup[i] != -1 {
			continue
		}
		tm := codec.FormatTime(time.UnixMilli(op.req.UnixMilli))
		if g := op.req.Group; g != 0 {
			gseq := gnext[g]
			gnext[g]++
			p.results[i].GSeq = gseq
			r.log = append(r.log, groupLogRow{GroupID: int64(g), Seq: int64(gseq), FromID: int64(op.req.From),
				FromName: op.req.FromName, Body: op.req.Body, CreatedMS: op.req.UnixMilli})
			d := codec.Delivery{MsgID: codec.MsgGroupChat, ID: op.req.From, Name: op.req.FromName,
				GroupID: g, Msg: op.req.Body, Time: tm, GSeq: gseq}
			for _, to := range op.req.To {
				r.entries = append(r.entries, service.Entry{To: to, Delivery: d})
			}
			// The sender's own entry: its session moves past the gseq.
			r.entries = append(r.entries, service.Entry{To: op.req.From, Delivery: d})
			continue
		}
		for _, to := range op.req.To {
			seq := next[to]
			next[to]++
			e := service.Entry{To: to, Delivery: codec.Delivery{
				MsgID: codec.MsgOneChat, ID: op.req.From, Name: op.req.FromName, ToID: op.req.ToUser,
				Msg: op.req.Body, Time: tm, Seq: seq,
			}}
			r.entries = append(r.entries, e)
			r.inbox = append(r.inbox, e)
			r.created = append(r.created, op.req.UnixMilli)
		}
	}
	for i := range p.batch {
		if j := p.dup[i]; j >= 0 {
			p.results[i] = p.results[j]
			p.results[i].Duplicate = true
			p.results[i].GSeq = 0
		}
	}
	return r
}

// allocGroupSeqs reserves counts[g] gseqs in each group's log, groups in id
// order (the lock order of every commit), and returns each group's first.
func (s *Store) allocGroupSeqs(ctx context.Context, tx txn, counts map[codec.GroupID]int64) (map[codec.GroupID]codec.Seq, error) {
	gids := slices.Sorted(maps.Keys(counts))
	next := make(map[codec.GroupID]codec.Seq, len(gids))
	q := &txStmts{ctx: ctx, tx: tx}
	for _, g := range gids {
		addGroupSeqStmts(q, s.dialect.bumpGroup, s.dialect.forUpdate, g, counts[g], next)
	}
	if q.err != nil {
		return nil, q.err
	}
	if len(next) != len(gids) {
		return nil, fmt.Errorf("store: gseq allocation returned %d of %d groups", len(next), len(gids))
	}
	return next, nil
}

// addGroupSeqStmts adds the upsert that reserves n gseqs in group g's log
// (bumpGroup, the dialect's) and the read that records the first in next
// (a locking read with the dialect's forUpdate: see dialect).
func addGroupSeqStmts(to stmtSink, bumpGroup, forUpdate string, g codec.GroupID, n int64, next map[codec.GroupID]codec.Seq) {
	to.exec(bumpGroup, g, n)
	to.query("SELECT last_seq FROM group_state WHERE groupid = ?"+forUpdate, func(rows rowScanner) error {
		var last int64
		err := rows.Scan(&last)
		next[g] = codec.Seq(last - n + 1)
		return err
	}, g)
}

// addSeqStmts adds, for one chunk of users in id order (the lock order),
// MySQL's upsert that reserves counts[id] seqs for each and raises
// acked_seq to acks[id] (bumpSeq), and the read that records each one's
// first new seq in next (a locking read with forUpdate: see dialect).
func addSeqStmts(to stmtSink, bumpSeq, forUpdate string, ids []codec.UserID, counts map[codec.UserID]int64, acks, next map[codec.UserID]codec.Seq) {
	args := make([]any, 0, 3*len(ids))
	for _, id := range ids {
		args = append(args, id, counts[id], acks[id])
	}
	to.exec(fmt.Sprintf(bumpSeq, placeholders(len(ids), "(?, ?, ?)")), args...)
	args = args[:0]
	for _, id := range ids {
		args = append(args, id)
	}
	to.query("SELECT userid, last_seq FROM inbox_state WHERE userid IN ("+placeholders(len(ids), "?")+")"+forUpdate,
		scanFirstSeqs(counts, next), args...)
}

// stmtSink runs the statements of a group commit's steps: txStmts one at a
// time inside a transaction, multiStmt several per round trip. A query's
// scan function reads each of its rows. After an error the rest are
// skipped; each implementation reports the first.
type stmtSink interface {
	exec(query string, args ...any)
	query(query string, scan func(rowScanner) error, args ...any)
}

// txStmts runs each statement at once in tx; err is the first error.
type txStmts struct {
	ctx context.Context
	tx  txn
	err error
}

var _ stmtSink = (*txStmts)(nil)

func (t *txStmts) exec(query string, args ...any) {
	if t.err == nil {
		_, t.err = t.tx.ExecContext(t.ctx, query, args...)
	}
}

func (t *txStmts) query(query string, scan func(rowScanner) error, args ...any) {
	if t.err == nil {
		rows, err := t.tx.QueryxContext(t.ctx, query, args...)
		t.err = scanRows(rows, err, scan)
	}
}

// insertGroupLog inserts group log rows, chunk rows per statement.
func insertGroupLog(ctx context.Context, tx sqlx.ExecerContext, rows []groupLogRow) error {
	for start := 0; start < len(rows); start += chunk {
		part := rows[start:min(start+chunk, len(rows))]
		if _, err := tx.ExecContext(ctx, insertGroupLogQuery(len(part)), groupLogArgs(nil, part)...); err != nil {
			return err
		}
	}
	return nil
}

// insertGroupLogQuery inserts n group log rows (groupLogArgs).
func insertGroupLogQuery(n int) string {
	return "INSERT INTO group_log (groupid, seq, fromid, fromname, body, created_ms) VALUES " +
		placeholders(n, "(?, ?, ?, ?, ?, ?)")
}

// groupLogArgs appends the values of each of rows.
func groupLogArgs(args []any, rows []groupLogRow) []any {
	for _, r := range rows {
		args = append(args, r.GroupID, r.Seq, r.FromID, r.FromName, r.Body, r.CreatedMS)
	}
	return args
}

// splitAcks separates inbox acknowledgements from group log ones.
func splitAcks(acks map[service.AckKey]codec.Seq) (map[codec.UserID]codec.Seq, map[service.AckKey]codec.Seq) {
	users := map[codec.UserID]codec.Seq{}
	groups := map[service.AckKey]codec.Seq{}
	for k, seq := range acks {
		if k.Group != 0 {
			groups[k] = seq
		} else {
			users[k.User] = seq
		}
	}
	return users, groups
}

// ackGroupsChunked raises member_state.acked_seq, chunk rows per statement,
// in (user, group) order.
func (s *Store) ackGroupsChunked(ctx context.Context, q sqlx.ExecerContext, acks map[service.AckKey]codec.Seq) error {
	keys := slices.SortedFunc(maps.Keys(acks), func(a, b service.AckKey) int {
		if c := cmp.Compare(a.User, b.User); c != 0 {
			return c
		}
		return cmp.Compare(a.Group, b.Group)
	})
	for start := 0; start < len(keys); start += chunk {
		part := keys[start:min(start+chunk, len(keys))]
		args := make([]any, 0, 3*len(part))
		for _, k := range part {
			args = append(args, k.User, k.Group, acks[k])
		}
		if _, err := q.ExecContext(ctx, fmt.Sprintf(s.dialect.ackGroup, placeholders(len(part), "(?, ?, ?)")), args...); err != nil {
			return err
		}
	}
	return nil
}

// chunk bounds the rows of one multi-row statement.
const chunk = 400

// sendWriter is the driver-specific part of a group commit. MySQL gets
// few round trips (multi-row statements); SQLite, where a statement costs
// no round trip but parsing a large one costs CPU, gets small prepared
// statements.
type sendWriter interface {
	// dedup records the new keys and returns the stored time of each key
	// sent before.
	dedup(ctx context.Context, tx txn, rows []sentRow) (map[dedupKey]int64, error)
	// allocSeqs reserves counts[u] seqs for each user and returns the first;
	// it also raises acked_seq to acks[u] (never lowering it, never past
	// last_seq).
	allocSeqs(ctx context.Context, tx txn, counts map[codec.UserID]int64, acks map[codec.UserID]codec.Seq) (map[codec.UserID]codec.Seq, error)
	insertInbox(ctx context.Context, tx txn, entries []service.Entry, created []int64) error
	// merge runs last in each commit, told how many inbox rows and dedup
	// keys the commit wrote.
	merge(ctx context.Context, tx txn, inboxRows, sentRows int) error
	// begin starts each attempt, inside its transaction, before the calls
	// above.
	begin(ctx context.Context, tx txn) error
	// inTx runs fn in a transaction of s (retrying deadlocks and lock
	// timeouts): take is called just before its COMMIT, skip with take's
	// ticket if the COMMIT fails.
	inTx(ctx context.Context, s *Store, fn func(txn) error, take func() uint64, skip func(uint64)) (uint64, error)
}

// multiRowWriter is the MySQL sendWriter.
type multiRowWriter struct{ bumpSeq, ackInbox, forUpdate string }

// dedup records each chunk of keys with one multi-row INSERT IGNORE: when
// every row inserts (the common case: no retries) that is all. Otherwise
// the chunk is undone to a savepoint, the keys sent before are read, and
// only the new ones are inserted. A key committed meanwhile by another node
// fails that insert with a conflict, and the group commit is retried.
func (w multiRowWriter) dedup(ctx context.Context, tx txn, rows []sentRow) (map[dedupKey]int64, error) {
	// Key order is lock order: sorted, two nodes' commits cannot deadlock
	// on each other's keys.
	rows = slices.SortedFunc(slices.Values(rows), compareSent)
	out := map[dedupKey]int64{}
	for start := 0; start < len(rows); start += chunk {
		part := rows[start:min(start+chunk, len(rows))]
		if _, err := tx.ExecContext(ctx, "SAVEPOINT dedup"); err != nil {
			return nil, err
		}
		res, err := insertSentChunk(ctx, tx, "INSERT IGNORE", part)
		if err != nil {
			return nil, err
		}
		if n, err := res.RowsAffected(); err != nil || n == int64(len(part)) {
			if err != nil {
				return nil, err
			}
			continue
		}
		if _, err := tx.ExecContext(ctx, "ROLLBACK TO SAVEPOINT dedup"); err != nil {
			return nil, err
		}
		stored, err := selectSent(ctx, tx, part)
		if err != nil {
			return nil, err
		}
		var fresh []sentRow
		for _, r := range part {
			if ms, ok := stored[r.key]; ok {
				out[r.key] = ms
			} else {
				fresh = append(fresh, r)
			}
		}
		if len(fresh) > 0 {
			if _, err := insertSentChunk(ctx, tx, "INSERT", fresh); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// merge implements sendWriter: MySQL writes inbox and sent directly
// (InnoDB does not write a page per dirty leaf at commit).
func (multiRowWriter) merge(context.Context, txn, int, int) error { return nil }

func (multiRowWriter) begin(context.Context, txn) error { return nil }

// inTx runs fn in a database/sql transaction from s's pool.
func (multiRowWriter) inTx(ctx context.Context, s *Store, fn func(txn) error, take func() uint64, skip func(uint64)) (uint64, error) {
	return s.inTxTicket(ctx, func(tx *sqlx.Tx) error { return fn(sqlTx{tx}) }, take, skip)
}

func (w multiRowWriter) insertInbox(ctx context.Context, tx txn, entries []service.Entry, created []int64) error {
	return insertInbox(ctx, tx, entries, created)
}

// compareSent orders dedup keys by sender, then clientmsgid: the order
// MySQL locks them in.
func compareSent(a, b sentRow) int {
	if c := cmp.Compare(a.key.sender, b.key.sender); c != 0 {
		return c
	}
	return strings.Compare(a.key.cmid, b.key.cmid)
}

// selectSent returns the stored time of each of rows (at most chunk) that
// was sent before.
func selectSent(ctx context.Context, q sqlx.QueryerContext, rows []sentRow) (map[dedupKey]int64, error) {
	var sb strings.Builder
	args := make([]any, 0, 2*len(rows))
	sb.WriteString("SELECT senderid, clientmsgid, created_ms FROM sent WHERE ")
	for i, r := range rows {
		if i > 0 {
			sb.WriteString(" OR ")
		}
		sb.WriteString("(senderid = ? AND clientmsgid = ?)")
		args = append(args, r.key.sender, r.key.cmid)
	}
	// A plain read, the one exception to dialect.forUpdate's rule: as a
	// locking read it would take gap locks beside the keys it does not
	// find, where two nodes' commits then deadlock on each other's
	// inserts. Its snapshot can make a later upsert fail with 1020 under
	// innodb_snapshot_isolation; that is retried (isRetryable).
	out := map[dedupKey]int64{}
	res, err := q.QueryxContext(ctx, sb.String(), args...)
	err = scanRows(res, err, func(res rowScanner) error {
		var k dedupKey
		var ms int64
		if err := res.Scan(&k.sender, &k.cmid, &ms); err != nil {
			return err
		}
		out[k] = ms
		return nil
	})
	return out, err
}

// sortedIDs returns the users of counts and acks in id order: rows are
// always locked in that order, so concurrent batches on other nodes cannot
// deadlock.
func sortedIDs(counts map[codec.UserID]int64, acks map[codec.UserID]codec.Seq) []codec.UserID {
	ids := make([]codec.UserID, 0, len(counts)+len(acks))
	for id := range counts {
		ids = append(ids, id)
	}
	for id := range acks {
		if _, ok := counts[id]; !ok {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// allocSeqs bumps inbox_state.last_seq and raises acked_seq with one
// multi-row upsert per chunk (one statement, so one lock order), then reads
// the new last_seq values back.
func (w multiRowWriter) allocSeqs(ctx context.Context, tx txn, counts map[codec.UserID]int64, acks map[codec.UserID]codec.Seq) (map[codec.UserID]codec.Seq, error) {
	ids := sortedIDs(counts, acks)
	next := make(map[codec.UserID]codec.Seq, len(ids))
	q := &txStmts{ctx: ctx, tx: tx}
	for start := 0; start < len(ids); start += chunk {
		addSeqStmts(q, w.bumpSeq, w.forUpdate, ids[start:min(start+chunk, len(ids))], counts, acks, next)
	}
	if q.err != nil {
		return nil, q.err
	}
	if len(next) != len(ids) {
		return nil, fmt.Errorf("store: seq allocation returned %d of %d users", len(next), len(ids))
	}
	return next, nil
}

// ackChunks raises inbox_ack.acked_seq of each user in acks, ackChunk
// users per autocommitted statement, ids ascending within a statement (the
// order other nodes' flushes lock them in). A deadlock or lock timeout is retried a few
// times; a chunk that still fails does not stop the others, and the
// chunks start at a random one, so a flush that keeps running out of time
// does not starve the same users every time. It returns the first error.
func (w multiRowWriter) ackChunks(ctx context.Context, s *Store, acks map[codec.UserID]codec.Seq) error {
	ids := sortedIDs(nil, acks)
	chunks := (len(ids) + ackChunk - 1) / ackChunk
	if chunks == 0 {
		return nil
	}
	first := rand.IntN(chunks)
	var firstErr error
	c := 0
	for ; c < chunks && ctx.Err() == nil; c++ {
		start := ((first + c) % chunks) * ackChunk
		part := ids[start:min(start+ackChunk, len(ids))]
		cctx, cancel := s.ctx(ctx)
		err := w.ackChunk(cctx, s, part, acks)
		cancel()
		if err != nil && firstErr == nil {
			firstErr = unavailable(err)
		}
	}
	if firstErr == nil && c < chunks {
		firstErr = unavailable(ctx.Err())
	}
	return firstErr
}

// ackChunk records the acknowledgements of users ids (ascending). An ack
// beyond the user's last seq is ignored, as on SQLite: last_seq is read
// with a plain SELECT (InnoDB's consistent read takes no lock, so this
// does not wait for group commits either; a stale value is only lower).
func (w multiRowWriter) ackChunk(ctx context.Context, s *Store, ids []codec.UserID, acks map[codec.UserID]codec.Seq) error {
	last := make(map[codec.UserID]codec.Seq, len(ids))
	err := queryIn(ctx, s.db, "SELECT userid, last_seq FROM inbox_state WHERE userid IN (?)", ids, func(rows rowScanner) error {
		var id codec.UserID
		var seq codec.Seq
		err := rows.Scan(&id, &seq)
		last[id] = seq
		return err
	})
	if err != nil {
		return err
	}
	vals := make([]any, 0, 2*len(ids))
	for _, id := range ids {
		if acks[id] <= last[id] {
			vals = append(vals, id, acks[id])
		}
	}
	if len(vals) == 0 {
		return nil
	}
	stmt := fmt.Sprintf(w.ackInbox, placeholders(len(vals)/2, "(?, ?)"))
	return retrying(ctx, &s.retries, func() error {
		_, err := s.db.ExecContext(ctx, stmt, vals...)
		return err
	})
}

// rowScanner is a row of *sql.Rows or *sqlx.Rows.
type rowScanner interface{ Scan(dest ...any) error }

// scanRows calls scan for each row of a query's result (rows, err), then
// closes it and reports the first error.
func scanRows(rows *sqlx.Rows, err error, scan func(rowScanner) error) error {
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := scan(rows); err != nil {
			return err
		}
	}
	if err := rows.Close(); err != nil {
		return err
	}
	return rows.Err()
}

// scanFirstSeqs reads (userid, last_seq) rows after counts[userid] seqs were
// reserved, and records each user's first new seq in next.
func scanFirstSeqs(counts map[codec.UserID]int64, next map[codec.UserID]codec.Seq) func(rowScanner) error {
	return func(rows rowScanner) error {
		var id codec.UserID
		var last int64
		if err := rows.Scan(&id, &last); err != nil {
			return err
		}
		next[id] = codec.Seq(last - counts[id] + 1)
		return nil
	}
}

func placeholders(n int, one string) string {
	var sb strings.Builder
	sb.Grow(n * (len(one) + 1))
	for i := 0; i < n; i++ {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(one)
	}
	return sb.String()
}

func insertInbox(ctx context.Context, tx sqlx.ExecerContext, entries []service.Entry, created []int64) error {
	for start := 0; start < len(entries); start += chunk {
		end := min(start+chunk, len(entries))
		if _, err := tx.ExecContext(ctx, insertInboxQuery(end-start), inboxArgs(nil, entries[start:end], created[start:end])...); err != nil {
			return err
		}
	}
	return nil
}

// insertInboxQuery inserts n inbox rows (inboxArgs).
func insertInboxQuery(n int) string {
	return "INSERT INTO inbox (userid, seq, kind, fromid, fromname, toid, groupid, body, created_ms) VALUES " +
		placeholders(n, "(?, ?, ?, ?, ?, ?, ?, ?, ?)")
}

// inboxArgs appends the values of an inbox row for each entry (created:
// each one's created_ms). Ids and numbers go in as int64s: database/sql
// passes those to the driver as they are, and converts a named type
// (codec.UserID) by reflection, one allocation per value.
func inboxArgs(args []any, entries []service.Entry, created []int64) []any {
	for i, e := range entries {
		d := e.Delivery
		args = append(args, int64(e.To), int64(d.Seq), int64(d.MsgID), int64(d.ID), d.Name, int64(d.ToID), int64(d.GroupID), d.Msg, created[i])
	}
	return args
}

// insertSentChunk inserts at most chunk rows with one statement; verb is
// "INSERT" or "INSERT IGNORE".
func insertSentChunk(ctx context.Context, tx sqlx.ExecerContext, verb string, rows []sentRow) (sql.Result, error) {
	return tx.ExecContext(ctx, insertSentQuery(verb, len(rows)), sentArgs(nil, rows)...)
}

// insertSentQuery inserts n rows into sent (sentArgs); verb is "INSERT" or
// "INSERT IGNORE".
func insertSentQuery(verb string, n int) string {
	return verb + " INTO sent (senderid, clientmsgid, created_ms) VALUES " + placeholders(n, "(?, ?, ?)")
}

// sentArgs appends the (senderid, clientmsgid, created_ms) values of rows,
// ids as int64s (inboxArgs says why).
func sentArgs(args []any, rows []sentRow) []any {
	for _, r := range rows {
		args = append(args, int64(r.key.sender), r.key.cmid, r.ms)
	}
	return args
}
