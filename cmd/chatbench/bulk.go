package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/chatcluster/chatcluster/store"
)

// bulkCreate inserts the users straight into the server's database (-bulk-db)
// in a few transactions, all with one bcrypt hash (cost 4) of the shared
// password. SIGNUP over the protocol commits one transaction per user, which
// on SQLite with synchronous=FULL is one fsync each (about 110 users/s on a
// disk with a 7.5 ms fsync); this takes a second for 20,000 users. The rows
// are the ones store.CreateUser writes. A user that exists (an earlier
// run's with the same -prefix, and so the same password) is kept as it
// is, with its history; it returns how many did.
func bulkCreate(ctx context.Context, dsn string, users []*user, password string) (reused int, err error) {
	st, err := store.Open(ctx, store.Config{DSN: dsn, MaxOpenConns: 2})
	if err != nil {
		return 0, fmt.Errorf("-bulk-db: %w", err)
	}
	defer st.Close()
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		return 0, err
	}
	db := st.DB()
	now := time.Now().UnixMilli()
	const perTx = 2000
	for start := 0; start < len(users); start += perTx {
		tx, err := db.BeginTxx(ctx, nil)
		if err != nil {
			return reused, fmt.Errorf("-bulk-db: %w", err)
		}
		insUser, err := tx.PreparexContext(ctx, "INSERT INTO users (name, password, created_ms) VALUES (?, ?, ?)")
		if err != nil {
			_ = tx.Rollback()
			return reused, fmt.Errorf("-bulk-db: %w", err)
		}
		insState, err := tx.PreparexContext(ctx, "INSERT INTO inbox_state (userid, last_seq, acked_seq) VALUES (?, 0, 0)")
		if err != nil {
			_ = tx.Rollback()
			return reused, fmt.Errorf("-bulk-db: %w", err)
		}
		for _, u := range users[start:min(start+perTx, len(users))] {
			// A user of an earlier run with the same -prefix is taken as
			// it is, with its history: a database warmed by such a run.
			err := tx.GetContext(ctx, &u.id, "SELECT id FROM users WHERE name = ?", u.name)
			if err == nil {
				reused++
				continue
			}
			if !errors.Is(err, sql.ErrNoRows) {
				_ = tx.Rollback()
				return reused, fmt.Errorf("-bulk-db: user %s: %w", u.name, err)
			}
			res, err := insUser.ExecContext(ctx, u.name, hash, now)
			if err == nil {
				u.id, err = res.LastInsertId()
			}
			if err == nil {
				_, err = insState.ExecContext(ctx, u.id)
			}
			if err != nil {
				_ = tx.Rollback()
				return reused, fmt.Errorf("-bulk-db: user %s: %w", u.name, err)
			}
		}
		_ = insUser.Close()
		_ = insState.Close()
		if err := tx.Commit(); err != nil {
			return reused, fmt.Errorf("-bulk-db: commit: %w", err)
		}
	}
	return reused, nil
}
