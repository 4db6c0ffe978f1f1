package test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatcluster/chatcluster/client"
	"github.com/chatcluster/chatcluster/codec"
)

// memberGroup is one member's delivery stream of one group.
type memberGroup struct {
	user  codec.UserID
	group codec.GroupID
}

// ledger is the checker: it counts, per recipient, what senders were told
// was stored (acked) against what recipients received, and fails on any
// loss, duplicate or reorder.
type ledger struct {
	mu       sync.Mutex
	acked    map[string][]codec.UserID // body -> recipients, for sends that got an ACK
	failed   map[string][]codec.UserID // sends that got an error
	got      map[codec.UserID]map[string]int
	last     map[codec.UserID]codec.Seq
	lastG    map[memberGroup]codec.Seq // per member and group: the last gseq received
	problems []string
	errnos   map[codec.Errno]int
}

func newLedger() *ledger {
	return &ledger{
		acked: map[string][]codec.UserID{}, failed: map[string][]codec.UserID{},
		got: map[codec.UserID]map[string]int{}, last: map[codec.UserID]codec.Seq{}, lastG: map[memberGroup]codec.Seq{}, errnos: map[codec.Errno]int{},
	}
}

func (l *ledger) sent(body string, to []codec.UserID, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err == nil {
		l.acked[body] = to
		delete(l.failed, body)
		return
	}
	if _, ok := l.acked[body]; !ok {
		l.failed[body] = to
	}
	l.errnos[client.ErrnoOf(err)]++
}

// received records a delivery; inbox deliveries to one user must come with
// seq 1, 2, 3, ..., and a group's deliveries to one member with increasing
// gseqs (gaps are the member's own messages; the body counts below catch a
// loss). The client library drops re-sent ones after a reconnect.
func (l *ledger) received(to codec.UserID, d codec.Delivery) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if d.GSeq > 0 {
		k := memberGroup{to, d.GroupID}
		if d.GSeq <= l.lastG[k] {
			l.problems = append(l.problems, fmt.Sprintf("user %d group %d: gseq %d after %d", to, d.GroupID, d.GSeq, l.lastG[k]))
		}
		l.lastG[k] = d.GSeq
	} else {
		if d.Seq != l.last[to]+1 {
			l.problems = append(l.problems, fmt.Sprintf("user %d: seq %d after %d", to, d.Seq, l.last[to]))
		}
		l.last[to] = d.Seq
	}
	if l.got[to] == nil {
		l.got[to] = map[string]int{}
	}
	l.got[to][d.Msg]++
}

// errnoCount is how many failed sends got errno e (client.NoErrno: the
// connection was lost).
func (l *ledger) errnoCount(e codec.Errno) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.errnos[e]
}

// missing counts acked deliveries not yet received.
func (l *ledger) missing() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for body, to := range l.acked {
		for _, u := range to {
			if l.got[u][body] == 0 {
				n++
			}
		}
	}
	return n
}

// verify waits until every acked message arrived, then checks there were
// no duplicates or reorders, and logs the counts.
func (l *ledger) verify(t *testing.T, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for l.missing() > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var ackedDeliveries, received, dups, lost, unackedArrived int
	for body, to := range l.acked {
		ackedDeliveries += len(to)
		for _, u := range to {
			if l.got[u][body] == 0 {
				lost++
				if lost <= 5 {
					l.problems = append(l.problems, fmt.Sprintf("lost: %q to user %d", body, u))
				}
			}
		}
	}
	for u, bodies := range l.got {
		for body, n := range bodies {
			received += n
			if n > 1 {
				dups++
				l.problems = append(l.problems, fmt.Sprintf("duplicate: %q to user %d (%d times)", body, u, n))
			}
			if _, ok := l.failed[body]; ok {
				unackedArrived++
			}
		}
	}
	var errnos []string
	for e, n := range l.errnos {
		errnos = append(errnos, fmt.Sprintf("errno %d x%d", e, n))
	}
	sort.Strings(errnos)
	summary := fmt.Sprintf("checker: sends acked %d (%d deliveries), sends failed %d [%s]; received %d; lost %d, duplicates %d, reorders %d, unacked-but-stored delivered %d",
		len(l.acked), ackedDeliveries, len(l.failed), strings.Join(errnos, ", "), received, lost, dups, countPrefix(l.problems, "user "), unackedArrived)
	t.Log(summary)
	// go test hides the logs of passing tests; build.sh prints this file.
	if path := os.Getenv("CHAT_TEST_REPORT"); path != "" {
		if f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			fmt.Fprintf(f, "%s: %s\n", t.Name(), summary)
			f.Close()
		}
	}
	if len(l.acked) == 0 {
		t.Error("checker: nothing was acknowledged; the test did not exercise anything")
	}
	for _, p := range l.problems {
		t.Error(p)
	}
}

// noFailures fails the test if any send got an error: for tests that
// inject no fault, where verify alone (which checks what was acknowledged)
// would let refused sends pass.
func (l *ledger) noFailures(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errnos) > 0 {
		t.Errorf("checker: sends failed with no fault injected: %d of them (errnos %v)", len(l.failed), l.errnos)
	}
}

func countPrefix(list []string, prefix string) int {
	n := 0
	for _, s := range list {
		if strings.HasPrefix(s, prefix) {
			n++
		}
	}
	return n
}

// member is a test user that stays online: it receives into the ledger and,
// when its connection drops, logs in again (with its token) through
// fallback, the nginx address.
type member struct {
	id       codec.UserID
	name     string
	password string
	addr     string // where it connects first
	fallback string // where it reconnects

	mu       sync.Mutex
	c        *client.Client
	token    string
	ack      *codec.LoginAck
	reconns  int
	stopping bool
}

func signup(t *testing.T, addr, name string) *member {
	t.Helper()
	c, err := client.Dial(context.Background(), addr, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m := &member{name: name, password: "password-" + name, addr: addr}
	if m.id, err = c.Signup(ctxT(t, 10*time.Second), name, m.password); err != nil {
		t.Fatalf("signup %s: %v", name, err)
	}
	return m
}

// connect logs m in at addr, by token when it has one.
func (m *member) connect(ctx context.Context, addr string, last codec.Seq, groups map[codec.GroupID]codec.Seq) error {
	c, err := client.Dial(ctx, addr, client.Options{DeliveryBuffer: 256})
	if err != nil {
		return err
	}
	c.SetLastSeq(last)
	c.SetGroupSeqs(groups)
	var ack *codec.LoginAck
	if m.token != "" {
		ack, err = c.LoginToken(ctx, m.id, m.token)
	} else {
		ack, err = c.Login(ctx, m.id, m.password)
	}
	if err != nil {
		c.Close()
		return err
	}
	m.mu.Lock()
	m.c, m.token, m.ack = c, ack.Token, ack
	m.mu.Unlock()
	return nil
}

func (m *member) client() *client.Client {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.c
}

// run receives until ctx ends, reconnecting through m.fallback whenever the
// connection drops.
func (m *member) run(ctx context.Context, t *testing.T, l *ledger, wg *sync.WaitGroup) {
	defer wg.Done()
	for {
		c := m.client()
		for d := range c.Deliveries() {
			l.received(m.id, d)
		}
		if ctx.Err() != nil {
			return
		}
		last, groups := c.LastSeq(), c.GroupSeqs()
		for attempt := 0; ; attempt++ {
			if ctx.Err() != nil {
				return
			}
			err := m.connect(ctx, m.fallback, last, groups)
			if err == nil {
				m.mu.Lock()
				m.reconns++
				m.mu.Unlock()
				break
			}
			if attempt%20 == 19 {
				t.Logf("%s: reconnect failing: %v", m.name, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// send sends one message and records the outcome; silence (no answer
// within 15 s) is a test failure, an errno or a dropped connection is not.
func send(t *testing.T, l *ledger, from *member, to codec.UserID, gid codec.GroupID, recipients []codec.UserID, body string) error {
	c := from.client()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var err error
	if gid != 0 {
		_, err = c.GroupChatWithID(ctx, gid, body, body)
	} else {
		_, err = c.ChatWithID(ctx, to, body, body)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("%s: no answer to %q within 15s (silence)", from.name, body)
	}
	l.sent(body, recipients, err)
	return err
}
