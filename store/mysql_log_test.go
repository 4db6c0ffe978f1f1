package store

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jmoiron/sqlx"
)

// syncBuffer is a bytes.Buffer safe for the driver's and the test's
// goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The MySQL driver's own messages go to the store's logger, not to
// stderr past the process's log format: here, the one it writes when it
// finds an idle connection the server closed.
func TestMySQLDriverLogsToTheStoreLogger(t *testing.T) {
	dsn := MySQLTestDSN(t)
	if dsn == "" {
		t.Skip("CHAT_TEST_MYSQL_DSN is not set")
	}
	_, conn, _, err := parseDSN(dsn)
	if err != nil {
		t.Fatal(err)
	}
	open := func(log *slog.Logger) (*sqlx.DB, error) {
		mc, err := mysql.ParseDSN(conn)
		if err != nil {
			return nil, err
		}
		return openMySQLPool(mc, log)
	}
	var out syncBuffer
	db, err := open(slog.New(slog.NewJSONHandler(&out, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	admin, err := open(slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	ctx := context.Background()
	var id int64
	if err := db.GetContext(ctx, &id, "SELECT CONNECTION_ID()"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.ExecContext(ctx, "KILL ?", id); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; {
		var n int
		if err := admin.GetContext(ctx, &n, "SELECT COUNT(*) FROM information_schema.processlist WHERE id = ?", id); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the killed connection is still listed after 5 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	var one int
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(out.String(), `"msg":"mysql driver"`); {
		// The pool's one idle connection is the killed one: the driver
		// finds it closed, says so, and the pool dials another.
		if err := db.GetContext(ctx, &one, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no driver message in the store's log after 5 s: %q", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := out.String(); !strings.Contains(got, "closing bad idle connection") || !strings.HasPrefix(got, "{") {
		t.Errorf("store log %q: want the driver's message as a JSON line", got)
	}
}
