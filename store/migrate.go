package store

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
)

//go:embed migrations/sqlite.sql
var sqliteSchema string

//go:embed migrations/mysql.sql
var mysqlSchema string

// migration is one numbered schema step.
type migration struct {
	version    int
	statements []string
}

// parseMigrations splits a schema file into "-- migration N" sections of
// ";"-terminated statements.
func parseMigrations(src string) ([]migration, error) {
	var out []migration
	var stmt strings.Builder
	for _, line := range strings.Split(src, "\n") {
		trimmed := strings.TrimSpace(line)
		if v, ok := strings.CutPrefix(trimmed, "-- migration "); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				return nil, fmt.Errorf("store: bad migration header %q", trimmed)
			}
			out = append(out, migration{version: n})
			continue
		}
		if trimmed == "" || strings.HasPrefix(trimmed, "--") {
			continue
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("store: statement before the first migration header")
		}
		stmt.WriteString(line)
		stmt.WriteByte('\n')
		if strings.HasSuffix(trimmed, ";") {
			m := &out[len(out)-1]
			m.statements = append(m.statements, strings.TrimSpace(stmt.String()))
			stmt.Reset()
		}
	}
	return out, nil
}

// migrate applies every migration newer than the recorded version. It is
// idempotent, and serialised across processes: on MySQL by a named lock,
// on SQLite by running in one BEGIN IMMEDIATE transaction (SQLite's DDL is
// transactional), so two processes starting on a new file (a server and
// `chatbench -bulk-db`, say) apply each migration once; SQLite migration 4
// adds a column, which cannot be done twice.
func (s *Store) migrate(ctx context.Context) (err error) {
	src := sqliteSchema
	if s.dialect.name == "mysql" {
		src = mysqlSchema
	}
	migs, err := parseMigrations(src)
	if err != nil {
		return err
	}
	conn, err := s.db.Connx(ctx)
	// A connection to a new SQLite file sets journal_mode(WAL), which
	// fails at once (no busy wait) while another process creates the file.
	for try := 0; err != nil && isRetryable(err) && try < 50 && ctx.Err() == nil; try++ {
		time.Sleep(20 * time.Millisecond)
		conn, err = s.db.Connx(ctx)
	}
	if err != nil {
		if s.dialect.name == "sqlite" { // the path helps; a MySQL DSN may hold a password
			path, _, _ := strings.Cut(strings.TrimPrefix(s.cfg.DSN, "sqlite:"), "?")
			return fmt.Errorf("store: open %s: %w", path, err)
		}
		return fmt.Errorf("store: connect: %w", err)
	}
	defer conn.Close()
	if s.dialect.name == "mysql" {
		var got int
		if err := conn.GetContext(ctx, &got, "SELECT GET_LOCK('chatcluster_migrate', 60)"); err != nil || got != 1 {
			return fmt.Errorf("store: migration lock: %v (got %d)", err, got)
		}
		defer conn.ExecContext(context.WithoutCancel(ctx), "SELECT RELEASE_LOCK('chatcluster_migrate')")
	} else {
		if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
			return fmt.Errorf("store: migration lock: %w", err)
		}
		defer func() {
			end := "COMMIT"
			if err != nil {
				end = "ROLLBACK"
			}
			if _, cerr := conn.ExecContext(context.WithoutCancel(ctx), end); cerr != nil && err == nil {
				err = fmt.Errorf("store: commit migrations: %w", cerr)
			}
		}()
	}
	if _, err := conn.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER NOT NULL PRIMARY KEY, applied_ms BIGINT NOT NULL)"); err != nil {
		return fmt.Errorf("store: create schema_migrations: %w", err)
	}
	var current int
	if err := conn.GetContext(ctx, &current, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"); err != nil {
		return fmt.Errorf("store: read schema version: %w", err)
	}
	for _, m := range migs {
		if m.version <= current {
			continue
		}
		for _, st := range m.statements {
			if _, err := conn.ExecContext(ctx, st); err != nil && !redoneDDL(err) {
				return fmt.Errorf("store: migration %d: %w", m.version, err)
			}
		}
		if _, err := conn.ExecContext(ctx, "INSERT INTO schema_migrations (version, applied_ms) VALUES (?, ?)", m.version, nowMilli()); err != nil {
			return fmt.Errorf("store: record migration %d: %w", m.version, err)
		}
		s.log.Info("applied schema migration", "version", m.version, "driver", s.dialect.name)
	}
	return nil
}

// redoneDDL reports a MySQL "duplicate column name" (1060) or "duplicate
// key name" (1061): MySQL commits each ALTER TABLE on its own, so a
// migration stopped after one (killed, or a later statement failing)
// runs it again at the next start, and finds it done. The migrations'
// other statements are written to be run again.
func redoneDDL(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && (me.Number == 1060 || me.Number == 1061)
}
