package store

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// checkpointer copies the SQLite write-ahead log back into the database
// file from its own goroutine and connection, so that the group-commit
// writer rarely has to: SQLite's automatic checkpoint runs inside the
// committing connection, holding up the next commit while it copies. A
// PASSIVE checkpoint blocks neither readers nor the writer.
//
// Under steady writes a PASSIVE checkpoint beside the writer never catches
// up completely, and only a complete one lets the next commit rewind the
// log. So the automatic checkpoint stays on with a high threshold
// (parseDSN: wal_autocheckpoint(8192), 32 MiB): when the log gets that
// long, the writer finishes the copy itself, which is then mostly done
// already, and the log starts over.
//
// It copies at least once an interval (1 s by default), and sooner once the
// writer has committed a number of rows since the last copy (4,096 by
// default: ~1,300 log pages flat out). Flat out a node appends ~16,000 log
// pages a second, so the log reached the 8,192-page threshold about every
// half second, and with a copy once a second the writer did most of the
// copying itself, ~30 % of its page writes (docs/BENCHMARKS-history.md,
// "Changes in session 10"). Copying on a fixed 100 ms tick instead
// re-copied the hot pages (log state, inbox_state, the logs' tails) ten
// times a second at low rates; counting rows keeps low rates at one copy an
// interval.
type checkpointer struct {
	s     *Store
	every time.Duration // the longest wait between copies
	rows  int64         // committed rows that start a copy sooner
	// committed counts the rows (sendOp.rows) the writer has committed;
	// the writer adds, run reads.
	committed atomic.Int64
	quit      chan struct{}
	stopped   chan struct{}
	once      sync.Once
}

func startCheckpointer(s *Store, every time.Duration, rows int64) *checkpointer {
	c := &checkpointer{s: s, every: every, rows: rows, quit: make(chan struct{}), stopped: make(chan struct{})}
	go c.run()
	return c
}

// run checks every tenth of the interval (at most every 100 ms) whether a
// copy is due: the interval has passed, or rows rows were committed.
func (c *checkpointer) run() {
	defer close(c.stopped)
	t := time.NewTicker(min(max(c.every/10, time.Millisecond), 100*time.Millisecond))
	defer t.Stop()
	last, lastRows := time.Now(), c.committed.Load()
	for {
		select {
		case now := <-t.C:
			rows := c.committed.Load()
			if now.Sub(last) < c.every && rows-lastRows < c.rows {
				continue
			}
			c.checkpoint("PASSIVE")
			last, lastRows = now, rows
		case <-c.quit:
			return
		}
	}
}

func (c *checkpointer) checkpoint(mode string) {
	ctx, cancel := context.WithTimeout(context.Background(), c.s.cfg.QueryTimeout)
	defer cancel()
	var busy, logPages, done int
	err := c.s.db.QueryRowxContext(ctx, "PRAGMA wal_checkpoint("+mode+")").Scan(&busy, &logPages, &done)
	if err != nil {
		c.s.log.Warn("wal checkpoint failed", "mode", mode, "err", err)
	}
}

// close stops the goroutine, then truncates the log: called after the last
// commit, so the database file alone holds everything. Later calls do
// nothing.
func (c *checkpointer) close() {
	c.once.Do(func() {
		close(c.quit)
		<-c.stopped
		c.checkpoint("TRUNCATE")
	})
}
