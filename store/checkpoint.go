package store

import (
	"context"
	"sync"
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
// It runs every 100 ms by default. Flat out a node appends ~16,000 log
// frames a second, so the log reaches that threshold about every half
// second: with a checkpoint once a second, the writer did most of the
// copying itself, ~30 % of its page writes (BENCHMARKS.md, "Changes in
// session 10"). At low rates a checkpoint finds little to copy.
type checkpointer struct {
	s       *Store
	every   time.Duration
	quit    chan struct{}
	stopped chan struct{}
	once    sync.Once
}

func startCheckpointer(s *Store, every time.Duration) *checkpointer {
	c := &checkpointer{s: s, every: every, quit: make(chan struct{}), stopped: make(chan struct{})}
	go c.run()
	return c
}

func (c *checkpointer) run() {
	defer close(c.stopped)
	t := time.NewTicker(c.every)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			c.checkpoint("PASSIVE")
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
