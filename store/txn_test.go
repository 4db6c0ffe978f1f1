package store

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/chatcluster/chatcluster/codec"
)

// TestWriterConnReplaced: the SQLite writer runs its commits on a
// connection of its own (writerConn). When that connection dies, the next
// commit gets a new one, with the statements prepared on it, and loses
// nothing.
func TestWriterConnReplaced(t *testing.T) {
	s := openStore(t, Config{DSN: "sqlite:" + filepath.Join(t.TempDir(), "chat.db"), MergeRows: 4})
	a, b := mustUser(t, s, "a"), mustUser(t, s, "b")
	sendKey(t, s, a, b, "before", 1)
	w := s.writer.(*preparedWriter).conn
	dead := w.conn
	if err := dead.Close(); err != nil { // any use now fails with sql.ErrConnDone
		t.Fatal(err)
	}
	// Enough sends to freeze, copy and empty the logs through the new
	// connection's statements.
	var want []string
	for i := range 10 {
		cmid := string(rune('A' + i))
		if res := sendKey(t, s, a, b, cmid, int64(10+i)); res.Duplicate {
			t.Fatalf("send %s taken for a duplicate", cmid)
		}
		want = append(want, cmid)
	}
	if res := sendKey(t, s, a, b, "before", 99); !res.Duplicate || res.UnixMilli != 1 {
		t.Fatalf("resend of a key stored before the connection died: %+v, want a duplicate of the send at 1", res)
	}
	// A connection left inside a transaction (as after a failed ROLLBACK)
	// fails its next BEGIN: it must be thrown away, not handed back by
	// the pool (which hands out the connection returned last first).
	stuck := w.conn
	if _, err := stuck.ExecContext(context.Background(), "BEGIN"); err != nil {
		t.Fatal(err)
	}
	sendKey(t, s, a, b, "after", 100) // fails the test if the BEGIN does
	checkInboxes(t, s, map[codec.UserID][]string{b: append(append([]string{"before"}, want...), "after")})
}

// TestExecRows: a statement run through Query (execRows) runs exactly
// once, whichever SQLite driver the build has, its error comes back, and
// inside a BEGIN IMMEDIATE it leaves nothing that stops the COMMIT.
func TestExecRows(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, Config{DSN: "sqlite:" + filepath.Join(t.TempDir(), "chat.db")})
	if _, err := s.db.ExecContext(ctx, "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	ins, err := s.db.PreparexContext(ctx, "INSERT INTO t (k, v) VALUES (?, ?), (?, ?)")
	if err != nil {
		t.Fatal(err)
	}
	defer ins.Close()
	if err := execRows(ctx, ins, int64(1), "a", int64(2), "b"); err != nil {
		t.Fatal(err)
	}
	if err := execRows(ctx, ins, int64(3), "c", int64(1), "again"); err == nil || !strings.Contains(err.Error(), "UNIQUE constraint failed") {
		t.Fatalf("insert of an existing key: %v, want a UNIQUE constraint error", err)
	}
	conn, err := s.db.Connx(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	upd, err := conn.PreparexContext(ctx, "UPDATE t SET v = v || ? WHERE k = ?")
	if err != nil {
		t.Fatal(err)
	}
	defer upd.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	if err := execRows(ctx, upd, "!", int64(2)); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(ctx, "COMMIT"); err != nil {
		t.Fatal(err)
	}
	var got []string
	if err := s.db.SelectContext(ctx, &got, "SELECT v FROM t ORDER BY k"); err != nil {
		t.Fatal(err)
	}
	if want := []string{"a", "b!"}; !slices.Equal(got, want) {
		t.Fatalf("rows %q, want %q (each statement run once; the failed insert left nothing)", got, want)
	}
}
