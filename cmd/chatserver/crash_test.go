package main

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/chatcluster/chatcluster/client"
	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/server/servertest"
)

// TestSQLiteKillUnderLoad checks the store's central promise on the
// embedded SQLite store: a one-to-one message whose ACK came back with
// errno 0 survives a SIGKILL of the node. Sender->recipient pairs send as
// fast as they can to recipients who stay offline; the node is killed four
// times (twice at a random moment, twice aimed at a moment the inbox logs
// are being merged, as log_state says; the kill lands a few ms later, and
// the log says how many found a merge under way), restarted on the same file each time (Open's
// flushLogs copies what the logs held), and at last every recipient logs
// in and reads its whole inbox: every acknowledged message must be there
// exactly once, seqs 1..last_seq without a gap, and nothing that was never
// sent. Sends that failed (their ACK lost in the kill) may or may not have
// been stored. CHAT_KILL_SEED replays a run's kill moments (the log names
// the seed).
func TestSQLiteKillUnderLoad(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("CHAT_KILL_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("CHAT_KILL_SEED: %v", err)
		}
	}
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	t.Logf("seed %d (CHAT_KILL_SEED replays the kill moments)", seed)

	start := time.Now()
	dir := t.TempDir()
	bin := filepath.Join(dir, "chatserver")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	dbPath := filepath.Join(dir, "chat.db")
	t.Logf("%v: built", time.Since(start).Round(time.Millisecond))
	srv := startNode(t, bin, dir, dbPath)

	// Sender i sends to recipient i; the recipients never log in until
	// the end, so every message waits in the store.
	const pairs, inFlight = 4, 16
	senders, recipients := make([]crashUser, pairs), make([]crashUser, pairs)
	for i := range pairs {
		senders[i] = srv.signup(t, fmt.Sprintf("sender%d", i))
		recipients[i] = srv.signup(t, fmt.Sprintf("recipient%d", i))
	}

	led := &crashLedger{attempted: map[string]int{}, acked: map[string]int{}, errnos: map[codec.Errno]int{}}
	// The kill moments: "time" kills after a random stretch of load,
	// "merge" once the inbox logs are being merged (then a random bit
	// later), so that the kills land early in a run, mid-run and inside
	// merges.
	modes := []string{"time", "merge", "time", "merge"}
	rng.Shuffle(len(modes), func(i, j int) { modes[i], modes[j] = modes[j], modes[i] })
	var merging int // kills that found the inbox logs mid-merge
	for round, mode := range modes {
		if round > 0 {
			srv = startNode(t, bin, dir, dbPath)
		}
		load := srv.startLoad(t, led, round, senders, recipients, inFlight)
		// Under way: every pair has had sends acknowledged this run.
		servertest.CheckFor(t, 20*time.Second, func() error {
			if n := led.ackedIn(round); n < 200*pairs {
				return fmt.Errorf("run %d: %d sends acknowledged so far", round, n)
			}
			return nil
		})
		var extra time.Duration
		switch mode {
		case "time":
			extra = time.Duration(rng.Int64N(int64(2500 * time.Millisecond)))
		case "merge":
			srv.awaitMerge(t, dbPath, 30*time.Second)
			extra = time.Duration(rng.Int64N(int64(30 * time.Millisecond)))
		}
		// The moment of the kill (not a synchronisation): load keeps running.
		time.Sleep(extra)
		srv.kill(t)
		load.wait(t)
		st, stored := inspectCopy(t, dbPath, filepath.Join(dir, fmt.Sprintf("kill%d", round)), recipients)
		if st.merging {
			merging++
		}
		t.Logf("%v: kill %d (%s, %v after load was under way): run acked %d of %d sends; at the kill: %s",
			time.Since(start).Round(time.Millisecond), round+1, mode, extra.Round(time.Millisecond), led.ackedIn(round), led.attemptedIn(round), st)
		// What the killed node left must already hold every acknowledged
		// message: this names the kill after which one went missing.
		for i, r := range recipients {
			for _, p := range led.checkStored(i, stored[r.id]) {
				t.Errorf("after kill %d: %s", round+1, p)
			}
		}
	}

	// The last run: every recipient reads its whole inbox.
	srv = startNode(t, bin, dir, dbPath)
	defer srv.kill(t)
	last := lastSeqs(t, dbPath, recipients)
	got := make([][]codec.Delivery, pairs)
	errs := make([]error, pairs)
	var wg sync.WaitGroup
	for i, r := range recipients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = srv.readInbox(r, last[r.id])
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	t.Logf("%v: inboxes read", time.Since(start).Round(time.Millisecond))
	srv.stop(t)

	// The verdict.
	var acked, delivered, unackedDelivered int
	for i := range pairs {
		problems := led.check(i, senders[i].id, got[i], last[recipients[i].id])
		for _, p := range problems {
			t.Error(p)
		}
		acked += led.ackedFor(i)
		delivered += len(got[i])
		unackedDelivered += led.unackedDelivered(i, got[i])
	}
	t.Logf("%d kills (%d mid-merge): %d sends, %d acknowledged, %d delivered, %d delivered though unacknowledged (ACK lost in a kill), send errors by errno %v",
		len(modes), merging, len(led.attempted), acked, delivered, unackedDelivered, led.errnos)
	for _, p := range checkStoredInbox(t, dbPath, recipients, last) {
		t.Error(p)
	}
	db := openSQLiteFile(t, dbPath)
	stored := readStored(t, db, recipients)
	db.Close()
	for i, r := range recipients {
		for _, p := range led.checkStored(i, stored[r.id]) {
			t.Errorf("after the clean stop: %s", p)
		}
	}
}

// crashNode is one run of the chatserver binary.
type crashNode struct {
	cmd    *exec.Cmd
	addr   string
	stderr *bytes.Buffer
	done   chan struct{} // closed when cmd.Wait returned
}

type crashUser struct {
	id   codec.UserID
	name string
}

const crashPassword = "secret1"

// startNode starts the binary on the SQLite file db and waits for it to
// accept connections.
func startNode(t *testing.T, bin, dir, db string) *crashNode {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	n := &crashNode{addr: addr, stderr: &bytes.Buffer{}, done: make(chan struct{})}
	// The default max-outbound: the final read's backlog of tens of
	// thousands of messages goes at the reader's pace (the pump's window).
	n.cmd = exec.Command(bin, "-listen", addr, "-db", "sqlite:"+db, "-bcrypt-cost", "4", "-rate", "-1",
		"-log-level", "warn")
	n.cmd.Dir = dir
	n.cmd.Stderr = &lockedWriter{w: n.stderr}
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { n.cmd.Wait(); close(n.done) }()
	t.Cleanup(func() {
		select {
		case <-n.done:
		default:
			n.cmd.Process.Kill()
			<-n.done
		}
		if log := n.log(); t.Failed() && log != "" {
			t.Logf("node %s log:\n%s", addr, log)
		}
	})
	servertest.CheckFor(t, 20*time.Second, func() error {
		select {
		case <-n.done:
			t.Fatalf("node exited: %v\n%s", n.cmd.ProcessState, n.log())
		default:
		}
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err
	})
	return n
}

// lockedWriter lets exec's copying goroutine and the test share a buffer.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (n *crashNode) log() string {
	w := n.cmd.Stderr.(*lockedWriter)
	w.mu.Lock()
	defer w.mu.Unlock()
	return n.stderr.String()
}

func (n *crashNode) kill(t *testing.T) {
	t.Helper()
	select {
	case <-n.done:
		return
	default:
	}
	if err := n.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-n.done
}

// stop ends the node with SIGTERM, as an operator would, and expects a
// clean exit.
func (n *crashNode) stop(t *testing.T) {
	t.Helper()
	n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("node did not stop on SIGTERM")
	}
	if !n.cmd.ProcessState.Success() {
		t.Fatalf("node exit after SIGTERM: %v\n%s", n.cmd.ProcessState, n.log())
	}
}

func (n *crashNode) dial(t *testing.T, opts client.Options) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, n.addr, opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (n *crashNode) signup(t *testing.T, name string) crashUser {
	t.Helper()
	c := n.dial(t, client.Options{})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	id, err := c.Signup(ctx, name, crashPassword)
	if err != nil {
		t.Fatalf("signup %s: %v", name, err)
	}
	return crashUser{id: id, name: name}
}

// crashLedger records what the senders were told. A body is
// "r<run>-p<pair>-<n>", unique over the test.
type crashLedger struct {
	mu        sync.Mutex
	attempted map[string]int // body -> run
	acked     map[string]int // body -> run, errno 0
	errnos    map[codec.Errno]int
	perRun    [][2]int // attempted, acked
}

func (l *crashLedger) attempt(run int, body string) {
	l.mu.Lock()
	l.attempted[body] = run
	for len(l.perRun) <= run {
		l.perRun = append(l.perRun, [2]int{})
	}
	l.perRun[run][0]++
	l.mu.Unlock()
}

func (l *crashLedger) result(run int, body string, err error) {
	l.mu.Lock()
	if err == nil {
		l.acked[body] = run
		l.perRun[run][1]++
	} else {
		l.errnos[client.ErrnoOf(err)]++
	}
	l.mu.Unlock()
}

func (l *crashLedger) attemptedIn(run int) int { return l.runCount(run, 0) }
func (l *crashLedger) ackedIn(run int) int     { return l.runCount(run, 1) }

func (l *crashLedger) runCount(run, i int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if run >= len(l.perRun) {
		return 0
	}
	return l.perRun[run][i]
}

func crashBody(run, pair int, n int64) string { return fmt.Sprintf("r%d-p%d-%d", run, pair, n) }

// bodyPair is the pair a body was sent by, or -1.
func bodyPair(body string) int {
	parts := strings.Split(body, "-")
	if len(parts) != 3 || !strings.HasPrefix(parts[1], "p") {
		return -1
	}
	p, err := strconv.Atoi(parts[1][1:])
	if err != nil {
		return -1
	}
	return p
}

// compareBodies orders bodies by run, pair and number.
func compareBodies(a, b string) int {
	key := func(body string) (k [3]int) {
		for i, part := range strings.SplitN(body, "-", 3) {
			k[i], _ = strconv.Atoi(strings.TrimLeft(part, "rp"))
		}
		return k
	}
	ka, kb := key(a), key(b)
	return slices.Compare(ka[:], kb[:])
}

func (l *crashLedger) ackedFor(pair int) int {
	n := 0
	for body := range l.acked {
		if bodyPair(body) == pair {
			n++
		}
	}
	return n
}

func (l *crashLedger) unackedDelivered(pair int, got []codec.Delivery) int {
	n := 0
	for _, d := range got {
		if _, ok := l.acked[d.Msg]; !ok {
			n++
		}
	}
	return n
}

// check compares what recipient pair got with what its sender was told:
// seqs 1..last in order, each body once, from the sender, sent by this
// test, and every acknowledged body among them.
func (l *crashLedger) check(pair int, sender codec.UserID, got []codec.Delivery, last codec.Seq) []string {
	var problems []string
	if codec.Seq(len(got)) != last {
		problems = append(problems, fmt.Sprintf("pair %d: %d deliveries, inbox last_seq %d", pair, len(got), last))
	}
	seen := map[string]codec.Seq{}
	var gaps []string
	prev := codec.Seq(0)
	for _, d := range got {
		if d.Seq != prev+1 {
			gaps = append(gaps, fmt.Sprintf("%d..%d", prev, d.Seq))
		}
		prev = d.Seq
		if prev, ok := seen[d.Msg]; ok {
			problems = append(problems, fmt.Sprintf("pair %d: %q delivered twice, seqs %d and %d", pair, d.Msg, prev, d.Seq))
		}
		seen[d.Msg] = d.Seq
		if d.ID != sender || bodyPair(d.Msg) != pair {
			problems = append(problems, fmt.Sprintf("pair %d: seq %d %q from user %d, not this pair's sender %d", pair, d.Seq, d.Msg, d.ID, sender))
		}
		if _, ok := l.attempted[d.Msg]; !ok {
			problems = append(problems, fmt.Sprintf("pair %d: seq %d %q was never sent", pair, d.Seq, d.Msg))
		}
	}
	if len(gaps) > 0 {
		problems = append(problems, fmt.Sprintf("pair %d: seqs not contiguous: %d gaps, e.g. %v", pair, len(gaps), gaps[:min(len(gaps), 10)]))
	}
	var lost []string
	lostByRun := map[int]int{}
	for body, run := range l.acked {
		if bodyPair(body) != pair {
			continue
		}
		if _, ok := seen[body]; !ok {
			lost = append(lost, body)
			lostByRun[run]++
		}
	}
	if len(lost) > 0 {
		slices.SortFunc(lost, compareBodies)
		problems = append(problems, fmt.Sprintf("pair %d: %d acknowledged messages lost (by run, i.e. before kill run+1: %v), e.g. %v",
			pair, len(lost), lostByRun, lost[:min(len(lost), 20)]))
	}
	return problems
}

// crashLoad is one run's senders.
type crashLoad struct {
	wg      sync.WaitGroup
	clients []*client.Client
}

// startLoad logs the senders in and starts inFlight goroutines each,
// sending to their recipient until the connection ends.
func (n *crashNode) startLoad(t *testing.T, l *crashLedger, run int, senders, recipients []crashUser, inFlight int) *crashLoad {
	t.Helper()
	load := &crashLoad{}
	var counter atomic.Int64
	for p, s := range senders {
		c := n.dial(t, client.Options{})
		load.clients = append(load.clients, c)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := c.Login(ctx, s.id, crashPassword)
		cancel()
		if err != nil {
			t.Fatalf("login %s: %v", s.name, err)
		}
		to := recipients[p].id
		for range inFlight {
			load.wg.Add(1)
			go func() {
				defer load.wg.Done()
				for c.Err() == nil {
					body := crashBody(run, p, counter.Add(1))
					l.attempt(run, body)
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					_, err := c.ChatWithID(ctx, to, body, c.NewClientMsgID())
					cancel()
					l.result(run, body, err)
				}
			}()
		}
	}
	return load
}

// wait waits for the senders to see their connections end.
func (l *crashLoad) wait(t *testing.T) {
	t.Helper()
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("senders still running 20 s after the kill")
	}
	for _, c := range l.clients {
		c.Close()
	}
}

// awaitMerge waits until log_state says the inbox logs are being merged
// (a frozen log partly copied), reading the live file. The reading
// connection is closed before returning: the node must not be killed
// while another process holds the file open, or closing that connection
// last would checkpoint the crashed write-ahead log itself.
func (n *crashNode) awaitMerge(t *testing.T, dbPath string, timeout time.Duration) {
	t.Helper()
	db := openSQLiteFile(t, dbPath)
	defer db.Close()
	servertest.CheckFor(t, timeout, func() error {
		var merging bool
		var rows int64
		if err := db.QueryRow("SELECT merging, rows FROM log_state WHERE name = 'inbox_log'").Scan(&merging, &rows); err != nil {
			return err
		}
		if !merging {
			return fmt.Errorf("inbox logs not merging (%d rows in the active log)", rows)
		}
		return nil
	})
}

// openSQLiteFile opens path with whichever SQLite driver this build links
// (the store's: go-sqlite3 with cgo, modernc.org/sqlite without).
func openSQLiteFile(t *testing.T, path string) *sql.DB {
	t.Helper()
	var driver string
	for _, d := range sql.Drivers() {
		if d == "sqlite3" || d == "sqlite" {
			driver = d
		}
	}
	if driver == "" {
		t.Fatalf("no SQLite driver among %v", sql.Drivers())
	}
	db, err := sql.Open(driver, path)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	if _, err := db.Exec("PRAGMA busy_timeout = 10000"); err != nil {
		db.Close()
		t.Fatal(err)
	}
	return db
}

// killState is what the file held right after a kill.
type killState struct {
	merging                bool
	active                 int
	rows                   int64
	fromKey                int64
	log0, log1, inbox, seq int64
	sentLog0, sentLog1     int64
}

func (s killState) String() string {
	return fmt.Sprintf("inbox logs merging=%v (active log %d, %d rows appended, frozen log copied up to user %d); inbox_log0 %d rows, inbox_log1 %d, inbox %d, sent_log0 %d, sent_log1 %d; recipients' last_seq sum %d",
		s.merging, s.active, s.rows, s.fromKey, s.log0, s.log1, s.inbox, s.sentLog0, s.sentLog1, s.seq)
}

// storedInbox is a recipient's rows in a file: inbox and both logs.
type storedInbox struct {
	last codec.Seq
	rows map[codec.Seq][]string // seq -> bodies (a row may be in a log and in inbox)
}

// readStored reads users' rows from inbox and the inbox logs.
func readStored(t *testing.T, db *sql.DB, users []crashUser) map[codec.UserID]storedInbox {
	t.Helper()
	out := map[codec.UserID]storedInbox{}
	for _, u := range users {
		st := storedInbox{rows: map[codec.Seq][]string{}}
		var last int64
		if err := db.QueryRow("SELECT coalesce((SELECT last_seq FROM inbox_state WHERE userid = ?), 0)", int64(u.id)).Scan(&last); err != nil {
			t.Fatal(err)
		}
		st.last = codec.Seq(last)
		rows, err := db.Query("SELECT seq, body FROM inbox WHERE userid = ?1 UNION ALL SELECT seq, body FROM inbox_log0 WHERE userid = ?1 "+
			"UNION ALL SELECT seq, body FROM inbox_log1 WHERE userid = ?1", int64(u.id))
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var seq int64
			var body string
			if err := rows.Scan(&seq, &body); err != nil {
				t.Fatal(err)
			}
			st.rows[codec.Seq(seq)] = append(st.rows[codec.Seq(seq)], body)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		rows.Close()
		out[u.id] = st
	}
	return out
}

// checkStored compares what a killed node's file holds for recipient pair
// with what the sender was told so far: seqs 1..last_seq each with one
// body (a copy in a log and in inbox must agree), no body under two seqs,
// and every acknowledged body there.
func (l *crashLedger) checkStored(pair int, st storedInbox) []string {
	var problems, missing, conflicts []string
	where := map[string]codec.Seq{}
	for seq := codec.Seq(1); seq <= st.last; seq++ {
		bodies := st.rows[seq]
		if len(bodies) == 0 {
			missing = append(missing, strconv.FormatInt(int64(seq), 10))
			continue
		}
		for _, b := range bodies[1:] {
			if b != bodies[0] {
				conflicts = append(conflicts, fmt.Sprintf("seq %d: %q and %q", seq, bodies[0], b))
			}
		}
		for _, b := range slices.Compact(slices.Clone(bodies)) {
			if prev, ok := where[b]; ok {
				conflicts = append(conflicts, fmt.Sprintf("%q at seqs %d and %d", b, prev, seq))
			}
			where[b] = seq
		}
	}
	for seq := range st.rows {
		if seq < 1 || seq > st.last {
			conflicts = append(conflicts, fmt.Sprintf("seq %d beyond last_seq %d", seq, st.last))
		}
	}
	if len(missing) > 0 {
		problems = append(problems, fmt.Sprintf("pair %d: %d seqs of 1..%d have no row, e.g. %v", pair, len(missing), st.last, missing[:min(len(missing), 10)]))
	}
	if len(conflicts) > 0 {
		problems = append(problems, fmt.Sprintf("pair %d: %d conflicting rows, e.g. %v", pair, len(conflicts), conflicts[:min(len(conflicts), 10)]))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var lost []string
	for body := range l.acked {
		if bodyPair(body) != pair {
			continue
		}
		if _, ok := where[body]; !ok {
			lost = append(lost, body)
		}
	}
	if len(lost) > 0 {
		slices.SortFunc(lost, compareBodies)
		problems = append(problems, fmt.Sprintf("pair %d: %d acknowledged messages not stored, e.g. %v", pair, len(lost), lost[:min(len(lost), 20)]))
	}
	return problems
}

// inspectCopy copies the killed node's database and write-ahead log into
// dir and reads the logs' state and the recipients' rows there, leaving
// the file the next run opens as the kill left it.
func inspectCopy(t *testing.T, dbPath, dir string, recipients []crashUser) (killState, map[codec.UserID]storedInbox) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(dir, filepath.Base(dbPath))
	for _, suffix := range []string{"", "-wal"} {
		b, err := os.ReadFile(dbPath + suffix)
		if errors.Is(err, os.ErrNotExist) && suffix != "" {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(cp+suffix, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	db := openSQLiteFile(t, cp)
	defer os.RemoveAll(dir)
	defer db.Close()
	var s killState
	err := db.QueryRow("SELECT merging, active, rows, from_key FROM log_state WHERE name = 'inbox_log'").Scan(&s.merging, &s.active, &s.rows, &s.fromKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []struct {
		dst   *int64
		query string
	}{
		{&s.log0, "SELECT count(*) FROM inbox_log0"},
		{&s.log1, "SELECT count(*) FROM inbox_log1"},
		{&s.inbox, "SELECT count(*) FROM inbox"},
		{&s.sentLog0, "SELECT count(*) FROM sent_log0"},
		{&s.sentLog1, "SELECT count(*) FROM sent_log1"},
		{&s.seq, "SELECT coalesce(sum(last_seq), 0) FROM inbox_state"},
	} {
		if err := db.QueryRow(q.query).Scan(q.dst); err != nil {
			t.Fatal(err)
		}
	}
	return s, readStored(t, db, recipients)
}

// lastSeqs reads each recipient's inbox last_seq from the live file (the
// node has copied the logs at open; nothing writes them now).
func lastSeqs(t *testing.T, dbPath string, users []crashUser) map[codec.UserID]codec.Seq {
	t.Helper()
	db := openSQLiteFile(t, dbPath)
	defer db.Close()
	out := map[codec.UserID]codec.Seq{}
	for _, u := range users {
		var last int64
		if err := db.QueryRow("SELECT coalesce((SELECT last_seq FROM inbox_state WHERE userid = ?), 0)", int64(u.id)).Scan(&last); err != nil {
			t.Fatal(err)
		}
		out[u.id] = codec.Seq(last)
	}
	return out
}

// readInbox logs u in and takes every delivery, the LOGIN_ACK's offline
// messages and what follows, acknowledging each, until it has seq last;
// then it logs out. It runs beside the other recipients' reads, so it
// returns its failure instead of failing the test.
func (n *crashNode) readInbox(u crashUser, last codec.Seq) ([]codec.Delivery, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, n.addr, client.Options{ManualAck: true})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var (
		mu  sync.Mutex
		got []codec.Delivery
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for d := range c.Deliveries() {
			mu.Lock()
			got = append(got, d)
			mu.Unlock()
			c.Ack(d.Seq)
		}
	}()
	snapshot := func() []codec.Delivery {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}
	if _, err := c.Login(ctx, u.id, crashPassword); err != nil {
		return nil, fmt.Errorf("login %s: %w", u.name, err)
	}
	// Poll until the last seq arrived. A gap in the inbox stops the
	// node's pump, so a loss shows up as a stall: give up once nothing
	// arrived for a while.
	const quiet = 5 * time.Second
	deadline := time.Now().Add(30 * time.Second)
	lastLen, lastChange := -1, time.Now()
	for {
		g := snapshot()
		seq := codec.Seq(0)
		if len(g) > 0 {
			seq = g[len(g)-1].Seq
		}
		if seq >= last {
			break
		}
		if len(g) != lastLen {
			lastLen, lastChange = len(g), time.Now()
		}
		if c.Err() != nil || time.Now().After(deadline) || time.Since(lastChange) > quiet {
			return g, fmt.Errorf("%s: reading the inbox stopped at %d deliveries (last seq %d) of last_seq %d: %v", u.name, len(g), seq, last, c.Err())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := c.Logout(ctx); err != nil {
		return nil, fmt.Errorf("logout %s: %w", u.name, err)
	}
	c.Close()
	<-done
	return snapshot(), nil
}

// checkStoredInbox reads the stopped node's file: each recipient's inbox
// holds seqs 1..last_seq, each body once, and the logs are empty.
func checkStoredInbox(t *testing.T, dbPath string, users []crashUser, last map[codec.UserID]codec.Seq) []string {
	t.Helper()
	db := openSQLiteFile(t, dbPath)
	defer db.Close()
	var problems []string
	for _, u := range users {
		var n, distinct, lo, hi int64
		err := db.QueryRow("SELECT count(*), count(DISTINCT body), coalesce(min(seq), 0), coalesce(max(seq), 0) FROM inbox WHERE userid = ?", int64(u.id)).
			Scan(&n, &distinct, &lo, &hi)
		if err != nil {
			t.Fatal(err)
		}
		if l := int64(last[u.id]); n != l || distinct != l || (l > 0 && (lo != 1 || hi != l)) {
			problems = append(problems, fmt.Sprintf("%s: inbox holds %d rows, %d distinct bodies, seqs %d..%d; last_seq %d", u.name, n, distinct, lo, hi, l))
		}
	}
	for _, table := range []string{"inbox_log0", "inbox_log1", "sent_log0", "sent_log1"} {
		var n int64
		if err := db.QueryRow("SELECT count(*) FROM " + table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			problems = append(problems, fmt.Sprintf("%s holds %d rows after a clean stop", table, n))
		}
	}
	return problems
}
