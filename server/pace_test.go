package server_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatcluster/chatcluster/client"
	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/conf"
)

// groupBacklogs makes member (who has acknowledged nothing) and creator
// other the two members of groups new groups, each with per messages of
// body from other in its log, written straight into the server's SQLite
// file.
func groupBacklogs(t *testing.T, ts *testServer, member, other codec.UserID, groups, per int, body string) {
	t.Helper()
	now := time.Now().UnixMilli()
	dbTx(t, ts, func(exec func(string, ...any) int64) {
		for g := range groups {
			gid := exec("INSERT INTO chat_groups (groupname, groupdesc, creator, created_ms, members) VALUES (?, '', ?, ?, 2)", fmt.Sprintf("g%d", g), other, now)
			exec("INSERT INTO group_members (groupid, userid, role, joined_ms) VALUES (?, ?, 'creator', 0), (?, ?, 'normal', 1)", gid, other, gid, member)
			exec("INSERT INTO group_state (groupid, last_seq) VALUES (?, ?)", gid, per)
			for seq := 1; seq <= per; seq++ {
				exec("INSERT INTO group_log (groupid, seq, fromid, fromname, body, created_ms) VALUES (?, ?, ?, 'other', ?, ?)", gid, seq, other, body, now)
			}
		}
	})
}

// TestGroupBacklogsShareOneWindow: the backlogs of a member of 20 groups
// (1.2 MB each) are written at the client's pace together. A pump per
// group, each keeping its own 1 MiB window, let 20 MiB wait unsent, and a
// client reading as fast as it could was closed as a slow consumer.
func TestGroupBacklogsShareOneWindow(t *testing.T) {
	const groups, per = 20, 300
	ts := startServer(t, nil)
	alice := ts.newUser("alice", client.Options{})
	other := ts.newUser("other", client.Options{})
	alice.c.Close()
	groupBacklogs(t, ts, alice.id, other.id, groups, per, strings.Repeat("b", 4000))
	c := ts.dial(client.Options{})
	if _, err := c.Login(ctxT(t), alice.id, alice.password); err != nil {
		t.Fatal(err)
	}
	next := map[codec.GroupID]codec.Seq{}
	for got := 0; got < groups*per; got++ {
		select {
		case d, ok := <-c.Deliveries():
			if !ok {
				t.Fatalf("connection ended after %d of %d deliveries: %v (slow consumer logged: %v)", got, groups*per, c.Err(), ts.Logged("closing slow consumer"))
			}
			if d.GSeq != next[d.GroupID]+1 {
				t.Fatalf("group %d: gseq %d after %d", d.GroupID, d.GSeq, next[d.GroupID])
			}
			next[d.GroupID] = d.GSeq
		case <-time.After(10 * time.Second):
			t.Fatalf("stuck after %d of %d deliveries", got, groups*per)
		}
	}
	if ts.Logged("closing slow consumer") {
		t.Fatal("a slow consumer was closed")
	}
}

// TestNonReaderWithBacklogs: a client that logs in as a user in 500 groups
// with a backlog and then reads nothing, but keeps its connection alive
// with PINGs, costs one waiting pump, not one per group; and once it has
// taken nothing for idle-timeout it is closed as a slow consumer.
func TestNonReaderWithBacklogs(t *testing.T) {
	const groups = 500
	ts := startServer(t, func(c *conf.Config) { c.IdleTimeout = 2 * time.Second })
	var before int
	r := loginWithBacklog(t, ts, 2000, func(bob codec.UserID, other codec.UserID) {
		groupBacklogs(t, ts, bob, other, groups, 1, "hi")
		before = runtime.NumGoroutine()
	})
	stop := make(chan struct{})
	defer close(stop)
	go pingUnread(r, stop)
	time.Sleep(500 * time.Millisecond) // the login's pumps start
	if n := runtime.NumGoroutine(); n > before+groups/10 {
		t.Errorf("%d goroutines with the non-reading client's backlogs waiting, %d before them", n, before)
	}
	checkFor(t, 10*time.Second, func() error {
		if !ts.Logged("took nothing for 2s") {
			return errors.New("the non-reading client is still open")
		}
		return nil
	})
	// It ends: what was buffered for it, then EOF (or a reset, the server
	// having closed with PINGs unread).
	r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, r.c); err != nil && !isReset(err) {
		t.Fatalf("after the close: %v", err)
	}
}

// pingUnread sends a PING on r every 300 ms until stop is closed, and
// reads nothing.
func pingUnread(r *raw, stop <-chan struct{}) {
	tick := time.NewTicker(300 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
			if _, err := r.c.Write(codec.AppendFrame(nil, []byte(`{"msgid":14}`))); err != nil {
				return
			}
		}
	}
}

// TestLiveBurstToReader: 40 senders pipeline 200 messages of 4,000 bytes
// each to bob, who reads (and acknowledges) as fast as he can. Written
// as they were committed, they went past max-outbound and bob was closed
// as a slow consumer; now what a client has not taken waits in the store,
// and bob gets every message, in order.
func TestLiveBurstToReader(t *testing.T) {
	ts := startServer(t, func(c *conf.Config) { c.Rate = -1 })
	bob := ts.newUser("bob", client.Options{})
	const senders, each = 40, 200
	text := strings.Repeat("z", 4000)
	var wg sync.WaitGroup
	defer wg.Wait()
	for i := range senders {
		r := ts.raw()
		rawLogin(t, r, fmt.Sprintf("sender%d", i))
		var b []byte
		for j := range each {
			body, _ := json.Marshal(map[string]any{"msgid": codec.MsgOneChat, "reqid": j, "toid": bob.id, "msg": text})
			b = codec.AppendFrame(b, body)
		}
		wg.Go(func() {
			r.write(b)
			for range each { // the ACKs
				if m := r.mustRead(); num(m, "errno") != 0 {
					t.Errorf("sender %d: %v", i, m)
					return
				}
			}
		})
	}
	var last codec.Seq
	for got := 0; got < senders*each; got++ {
		select {
		case d, ok := <-bob.c.Deliveries():
			if !ok {
				t.Fatalf("bob was cut off after %d of %d deliveries: %v (slow consumer logged: %v)",
					got, senders*each, bob.c.Err(), ts.Logged("closing slow consumer"))
			}
			if d.Seq != last+1 {
				t.Fatalf("seq %d after %d", d.Seq, last)
			}
			last = d.Seq
			bob.c.Ack(d.Seq)
		case <-time.After(10 * time.Second):
			t.Fatalf("bob got %d of %d", got, senders*each)
		}
	}
}

// TestSlowReaderNotClosed: a client that reads its backlog slowly but
// steadily (about 40 KB/s) and pings is not closed as a slow consumer,
// though gnet's own buffer does not move for longer than idle-timeout
// (it moves only once the kernel's send buffer has drained a good part):
// what the client takes shows in the socket's send queue.
func TestSlowReaderNotClosed(t *testing.T) {
	ts := startServer(t, func(c *conf.Config) { c.IdleTimeout = 2 * time.Second })
	r := loginWithBacklog(t, ts, 1500)
	stop := make(chan struct{})
	defer close(stop)
	go pingUnread(r, stop)
	buf := make([]byte, 4<<10)
	total := 0
	for end := time.Now().Add(8 * time.Second); time.Now().Before(end); {
		r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := io.ReadFull(r.c, buf)
		total += n
		if err != nil || ts.Logged("took nothing for") {
			t.Fatalf("closed after %d bytes read steadily: %v (slow consumer logged: %v)", total, err, ts.Logged("took nothing for"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
