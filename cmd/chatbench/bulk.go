package main

import (
	"context"
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
// are the ones store.CreateUser writes.
func bulkCreate(ctx context.Context, dsn string, users []*user, password string) error {
	st, err := store.Open(ctx, store.Config{DSN: dsn, MaxOpenConns: 2})
	if err != nil {
		return fmt.Errorf("-bulk-db: %w", err)
	}
	defer st.Close()
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		return err
	}
	db := st.DB()
	now := time.Now().UnixMilli()
	const perTx = 2000
	for start := 0; start < len(users); start += perTx {
		tx, err := db.BeginTxx(ctx, nil)
		if err != nil {
			return fmt.Errorf("-bulk-db: %w", err)
		}
		insUser, err := tx.PreparexContext(ctx, "INSERT INTO users (name, password, created_ms) VALUES (?, ?, ?)")
		if err != nil {
			_ = tx.Rollback()
			return fmt.Errorf("-bulk-db: %w", err)
		}
		insState, err := tx.PreparexContext(ctx, "INSERT INTO inbox_state (userid, last_seq, acked_seq) VALUES (?, 0, 0)")
		if err != nil {
			_ = tx.Rollback()
			return fmt.Errorf("-bulk-db: %w", err)
		}
		for _, u := range users[start:min(start+perTx, len(users))] {
			res, err := insUser.ExecContext(ctx, u.name, hash, now)
			if err == nil {
				u.id, err = res.LastInsertId()
			}
			if err == nil {
				_, err = insState.ExecContext(ctx, u.id)
			}
			if err != nil {
				_ = tx.Rollback()
				return fmt.Errorf("-bulk-db: user %s: %w (name taken? use another -prefix)", u.name, err)
			}
		}
		_ = insUser.Close()
		_ = insState.Close()
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("-bulk-db: commit: %w", err)
		}
	}
	return nil
}
