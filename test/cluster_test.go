package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatcluster/chatcluster/client"
	"github.com/chatcluster/chatcluster/codec"
)

// online signs up and logs in count members on each address in turn.
func online(t *testing.T, c *cluster, prefix string, count int, addrs ...string) []*member {
	t.Helper()
	ms := make([]*member, count)
	for i := range ms {
		addr := addrs[i%len(addrs)]
		ms[i] = signup(t, addr, fmt.Sprintf("%s%d", prefix, i))
		ms[i].fallback = c.nginx.addr
		if err := ms[i].connect(ctxT(t, 10*time.Second), addr, 0, nil); err != nil {
			t.Fatalf("login %s: %v", ms[i].name, err)
		}
		t.Cleanup(func() { ms[i].client().Close() })
	}
	return ms
}

func receiveAll(t *testing.T, ctx context.Context, l *ledger, ms []*member) *sync.WaitGroup {
	wg := &sync.WaitGroup{}
	for _, m := range ms {
		wg.Add(1)
		go m.run(ctx, t, l, wg)
	}
	return wg
}

// stopReceivers ends the receive loops.
func stopReceivers(cancel context.CancelFunc, wg *sync.WaitGroup, ms []*member) {
	cancel()
	for _, m := range ms {
		m.client().Close()
	}
	wg.Wait()
}

func TestClusterChat(t *testing.T) {
	for _, nodes := range []int{2, 3} {
		t.Run(fmt.Sprintf("%d-nodes", nodes), func(t *testing.T) {
			c := startCluster(t, nodes)
			addrs := []string{}
			for _, n := range c.nodes {
				addrs = append(addrs, n.addr)
			}
			// Users spread over every node directly, plus some through nginx.
			ms := online(t, c, "u", 3*nodes, addrs...)
			ms = append(ms, online(t, c, "lb", 3, c.nginx.addr)...)
			l := newLedger()
			ctx, cancel := context.WithCancel(context.Background())
			wg := receiveAll(t, ctx, l, ms)

			// A group with every user; presence in LOGIN_ACK spans nodes.
			gid, err := ms[0].client().CreateGroup(ctxT(t, 5*time.Second), fmt.Sprintf("all-%d", nodes), "everyone")
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range ms[1:] {
				if err := m.client().AddGroup(ctxT(t, 5*time.Second), gid); err != nil {
					t.Fatal(err)
				}
			}
			check, err := client.Dial(ctxT(t, 5*time.Second), c.nginx.addr, client.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer check.Close()
			probe := signup(t, c.nginx.addr, "probe")
			ack, err := check.Login(ctxT(t, 5*time.Second), probe.id, probe.password)
			if err != nil {
				t.Fatal(err)
			}
			_ = ack
			if err := check.AddGroup(ctxT(t, 5*time.Second), gid); err != nil {
				t.Fatal(err)
			}
			check.Close()
			check, _ = client.Dial(ctxT(t, 5*time.Second), c.nginx.addr, client.Options{})
			ack, err = check.Login(ctxT(t, 5*time.Second), probe.id, probe.password)
			if err != nil {
				t.Fatal(err)
			}
			onlineCount := 0
			for _, u := range ack.Groups[0].Users {
				if u.State == codec.StateOnline {
					onlineCount++
				}
			}
			if onlineCount != len(ms)+1 {
				t.Fatalf("LOGIN_ACK shows %d of %d group members online", onlineCount, len(ms)+1)
			}
			check.Close()

			var sends sync.WaitGroup
			for i, m := range ms {
				sends.Add(1)
				go func() {
					defer sends.Done()
					to := ms[(i+1)%len(ms)]
					for j := 0; j < 20; j++ {
						send(t, l, m, to.id, 0, []codec.UserID{to.id}, fmt.Sprintf("%s>%s#%d", m.name, to.name, j))
					}
					var rcpts []codec.UserID
					for _, o := range ms {
						if o != m {
							rcpts = append(rcpts, o.id)
						}
					}
					for j := 0; j < 5; j++ {
						send(t, l, m, 0, gid, rcpts, fmt.Sprintf("%s@g#%d", m.name, j))
					}
				}()
			}
			sends.Wait()
			l.verify(t, 20*time.Second)
			l.noFailures(t) // no fault injected: every send is acknowledged
			stopReceivers(cancel, wg, ms)
		})
	}
}

// TestKillNode kills -9 a node while its users are receiving; they log in
// again through nginx (landing on the other node) and get everything that
// was acknowledged to the senders, once.
func TestKillNode(t *testing.T) {
	c := startCluster(t, 2)
	victims := online(t, c, "victim", 4, c.nodes[0].addr)
	senders := online(t, c, "sender", 4, c.nodes[1].addr)
	l := newLedger()
	ctx, cancel := context.WithCancel(context.Background())
	all := append(append([]*member{}, victims...), senders...)
	wg := receiveAll(t, ctx, l, all)
	var sent atomic.Int64
	stop := make(chan struct{})
	var sends sync.WaitGroup
	for i, s := range senders {
		sends.Add(1)
		go func() {
			defer sends.Done()
			to := victims[i]
			for j := 0; ; j++ {
				select {
				case <-stop:
					return
				default:
				}
				send(t, l, s, to.id, 0, []codec.UserID{to.id}, fmt.Sprintf("%s>%s#%d", s.name, to.name, j))
				sent.Add(1)
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	checkFor(t, 10*time.Second, func() error {
		if sent.Load() < 200 {
			return fmt.Errorf("%d sent", sent.Load())
		}
		return nil
	})
	c.nodes[0].kill()
	t.Logf("killed %s after %d sends", c.nodes[0].name, sent.Load())
	before := sent.Load()
	checkFor(t, 20*time.Second, func() error {
		if sent.Load() < before+400 {
			return fmt.Errorf("%d sent since the kill", sent.Load()-before)
		}
		return nil
	})
	close(stop)
	sends.Wait()
	l.verify(t, 30*time.Second)
	for _, v := range victims {
		if v.reconns == 0 {
			t.Errorf("%s never reconnected", v.name)
		}
	}
	stopReceivers(cancel, wg, all)
}

// sendLoop makes each sender send to its peer until stop closes, retrying a
// failed send with the same clientmsgid (the retry must not be stored twice).
func sendLoop(t *testing.T, l *ledger, pairs [][2]*member, stop chan struct{}, sent *atomic.Int64) *sync.WaitGroup {
	wg := &sync.WaitGroup{}
	for _, p := range pairs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			from, to := p[0], p[1]
			for j := 0; ; j++ {
				select {
				case <-stop:
					return
				default:
				}
				sendRetrying(t, l, from, to.id, 0, []codec.UserID{to.id}, fmt.Sprintf("%s>%s#%d", from.name, to.name, j))
				sent.Add(1)
				time.Sleep(3 * time.Millisecond)
			}
		}()
	}
	return wg
}

// sendRetrying sends one message, retrying a failure with the same
// clientmsgid for longer than any outage the tests cause (MariaDB stopped
// 3 s, a node killed, Redis restarted).
func sendRetrying(t *testing.T, l *ledger, from *member, to codec.UserID, gid codec.GroupID, rcpts []codec.UserID, body string) {
	for giveUp := time.Now().Add(20 * time.Second); time.Now().Before(giveUp); {
		err := send(t, l, from, to, gid, rcpts, body)
		if err == nil {
			return
		}
		if client.ErrnoOf(err) == client.NoErrno && !errors.Is(err, context.DeadlineExceeded) {
			time.Sleep(100 * time.Millisecond) // connection lost: the receive loop reconnects
		} else {
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// groupLoop makes one member on each node send to a group of all members
// until stop closes, retrying failures like sendLoop: the group's log is
// read by members on both nodes while the tests break things.
func groupLoop(t *testing.T, l *ledger, all []*member, stop chan struct{}) *sync.WaitGroup {
	gid, err := all[0].client().CreateGroup(ctxT(t, 5*time.Second), fmt.Sprintf("traffic-%d", time.Now().UnixNano()), "")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range all[1:] {
		if err := m.client().AddGroup(ctxT(t, 5*time.Second), gid); err != nil {
			t.Fatal(err)
		}
	}
	wg := &sync.WaitGroup{}
	for _, from := range []*member{all[0], all[len(all)-1]} { // crossPairs: first on node 1, last on node 2
		var rcpts []codec.UserID
		for _, m := range all {
			if m != from {
				rcpts = append(rcpts, m.id)
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; ; j++ {
				select {
				case <-stop:
					return
				default:
				}
				sendRetrying(t, l, from, 0, gid, rcpts, fmt.Sprintf("%s>group#%d", from.name, j))
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	return wg
}

func crossPairs(c *cluster, t *testing.T) ([][2]*member, []*member) {
	a := online(t, c, "a", 4, c.nodes[0].addr)
	b := online(t, c, "b", 4, c.nodes[1].addr)
	var pairs [][2]*member
	for i := range a {
		pairs = append(pairs, [2]*member{a[i], b[i]}, [2]*member{b[i], a[i]})
	}
	return pairs, append(a, b...)
}

func waitSent(t *testing.T, sent *atomic.Int64, more int64) {
	t.Helper()
	before := sent.Load()
	checkFor(t, 30*time.Second, func() error {
		if sent.Load() < before+more {
			return fmt.Errorf("%d sent", sent.Load()-before)
		}
		return nil
	})
}

// traffic is members on two nodes sending to each other, and to a group of
// all of them, until finish.
type traffic struct {
	t      *testing.T
	l      *ledger
	all    []*member
	sent   atomic.Int64
	stop   chan struct{}
	cancel context.CancelFunc
	recv   *sync.WaitGroup
	sends  *sync.WaitGroup
	gsends *sync.WaitGroup
}

func startTraffic(t *testing.T, c *cluster) *traffic {
	pairs, all := crossPairs(c, t)
	tr := &traffic{t: t, l: newLedger(), all: all, stop: make(chan struct{})}
	var ctx context.Context
	ctx, tr.cancel = context.WithCancel(context.Background())
	tr.recv = receiveAll(t, ctx, tr.l, all)
	tr.gsends = groupLoop(t, tr.l, all, tr.stop)
	tr.sends = sendLoop(t, tr.l, pairs, tr.stop, &tr.sent)
	return tr
}

// waitSent waits until more messages were sent (acked or not).
func (tr *traffic) waitSent(more int64) { waitSent(tr.t, &tr.sent, more) }

// finish stops sending, checks every acknowledged message arrived once and
// in order, and stops the receivers.
func (tr *traffic) finish() {
	close(tr.stop)
	tr.sends.Wait()
	tr.gsends.Wait()
	tr.l.verify(tr.t, 30*time.Second)
	stopReceivers(tr.cancel, tr.recv, tr.all)
}

// TestRedisRestart restarts Redis (empty: no persistence) mid-traffic.
func TestRedisRestart(t *testing.T) {
	c := startCluster(t, 2)
	tr := startTraffic(t, c)
	tr.waitSent(200)
	c.redis.kill()
	// With Redis down a login (which needs presence) fails promptly with
	// errno 10, and the node keeps its other connections.
	probe, err := client.Dial(ctxT(t, 5*time.Second), c.nodes[0].addr, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = probe.Login(ctxT(t, 15*time.Second), tr.all[0].id, tr.all[0].password)
	if client.ErrnoOf(err) != codec.ErrnoUnavailable || time.Since(start) > 8*time.Second {
		t.Errorf("login with Redis down: %v after %v, want errno 10 promptly", err, time.Since(start))
	}
	probe.Close()
	if err := c.redis.start(); err != nil {
		t.Fatal(err)
	}
	t.Log("redis restarted")
	tr.waitSent(400)
	tr.finish()
	dropped := tr.l.errnoCount(client.NoErrno)
	if dropped > 0 {
		t.Errorf("%d sends lost their connection: a failed login must not kick the user's session", dropped)
	}
}

// TestMariaDBStop stops MariaDB for a few seconds mid-traffic: sends get
// errno 10 promptly, and everything acknowledged is delivered once.
func TestMariaDBStop(t *testing.T) {
	c := startCluster(t, 2)
	tr := startTraffic(t, c)
	tr.waitSent(200)
	mariadb.stop()
	t.Log("mariadb stopped")
	// While it is down a send fails promptly with errno 10.
	start := time.Now()
	_, err := tr.all[0].client().Chat(ctxT(t, 15*time.Second), tr.all[1].id, "while down")
	if client.ErrnoOf(err) != codec.ErrnoUnavailable || time.Since(start) > 8*time.Second {
		t.Errorf("send with MariaDB down: %v after %v, want errno 10 promptly", err, time.Since(start))
	}
	time.Sleep(2 * time.Second)
	if err := mariadb.start(); err != nil {
		t.Fatal(err)
	}
	t.Log("mariadb started again")
	tr.waitSent(400)
	tr.finish()
	n := tr.l.errnoCount(codec.ErrnoUnavailable)
	if n == 0 {
		t.Error("no send saw errno 10 while MariaDB was down")
	}
}

// TestDoubleLoginAcrossNodes logs the same user in on two nodes at once,
// several times: exactly one session survives each time.
func TestDoubleLoginAcrossNodes(t *testing.T) {
	c := startCluster(t, 2)
	u := signup(t, c.nodes[0].addr, "twice")
	sender := online(t, c, "s", 1, c.nodes[1].addr)[0]
	for round := 0; round < 5; round++ {
		var cs [2]*client.Client
		var errs [2]error
		var wg sync.WaitGroup
		for i := range cs {
			cl, err := client.Dial(ctxT(t, 5*time.Second), c.nodes[i].addr, client.Options{})
			if err != nil {
				t.Fatal(err)
			}
			cs[i] = cl
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = cl.Login(ctxT(t, 10*time.Second), u.id, u.password)
			}()
		}
		wg.Wait()
		var survivor *client.Client
		checkFor(t, 10*time.Second, func() error {
			alive := 0
			for i, cl := range cs {
				select {
				case <-cl.Done():
				default:
					if errs[i] == nil {
						alive++
						survivor = cl
					}
				}
			}
			if alive != 1 {
				return fmt.Errorf("round %d: %d sessions alive (login errors %v)", round, alive, errs)
			}
			return nil
		})
		body := fmt.Sprintf("round %d", round)
		if _, err := sender.client().Chat(ctxT(t, 5*time.Second), u.id, body); err != nil {
			t.Fatal(err)
		}
		timeout := time.After(10 * time.Second)
		for got := false; !got; { // earlier rounds' messages may be re-sent first
			select {
			case d, ok := <-survivor.Deliveries():
				if !ok {
					t.Fatalf("round %d: the survivor's connection ended", round)
				}
				got = d.Msg == body
			case <-timeout:
				t.Fatalf("round %d: the survivor did not get %q", round, body)
			}
		}
		for _, cl := range cs {
			cl.Close()
		}
	}
}

// TestChatbenchCrossNodeThroughNginx runs chatbench through nginx in front
// of two nodes, as BENCHMARKS.md's case 6 does: LOGIN_ACK names each user's
// node, -cross-node pairs every sender with a recipient on the other node,
// and every message arrives once.
func TestChatbenchCrossNodeThroughNginx(t *testing.T) {
	c := startCluster(t, 2)
	// 5, 10 and 20 chatting pairs: the original, two nodes behind nginx,
	// lost 20 of 136 messages with 5 pairs and left a login unanswered
	// with 10.
	for _, n := range []int{10, 20, 40} {
		t.Run(fmt.Sprintf("%d-users", n), func(t *testing.T) {
			chatbenchThroughNginx(t, c, n)
		})
	}
}

// chatbenchThroughNginx runs chatbench's chat scenario with n users, every
// one logged in through nginx and every pair across the nodes, and checks
// that every login was answered and every message delivered once.
func chatbenchThroughNginx(t *testing.T, c *cluster, n int) {
	cmd := exec.CommandContext(ctxT(t, 2*time.Minute), filepath.Join(binDir, "chatbench"),
		"-addr", c.nginx.addr, "-cross-node", "-n", strconv.Itoa(n), "-duration", "2s", "-rate", "200",
		"-timeout", "20s", "-json", "-quiet", "chat")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chatbench: %v\n%s\n%s", err, out, stderr.String())
	}
	var rep struct {
		OK         bool           `json:"ok"`
		Errors     []string       `json:"errors"`
		Nodes      map[string]int `json:"nodes"`
		Pairs      int            `json:"pairs"`
		CrossPairs int            `json:"cross_node_pairs"`
		Traffic    struct {
			Sent, Acked, Delivered, Expected, Lost, Duplicates int64
		} `json:"traffic"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	tr := rep.Traffic
	if !rep.OK || tr.Sent == 0 || tr.Acked != tr.Sent || tr.Delivered != tr.Expected || tr.Expected != tr.Acked || tr.Lost != 0 || tr.Duplicates != 0 {
		t.Fatalf("report: ok %v, errors %v, traffic %+v", rep.OK, rep.Errors, tr)
	}
	// least_conn spreads the connections over both nodes (every login
	// answered); a pair for every user of the smaller share, each pair
	// across nodes.
	if len(rep.Nodes) != 2 || rep.Nodes["node1"]+rep.Nodes["node2"] != n {
		t.Fatalf("users per node %v, want %d over node1 and node2", rep.Nodes, n)
	}
	if want := min(rep.Nodes["node1"], rep.Nodes["node2"]); rep.Pairs != want || rep.CrossPairs != want {
		t.Fatalf("pairs %d, across nodes %d, want %d (nodes %v)", rep.Pairs, rep.CrossPairs, want, rep.Nodes)
	}
	t.Logf("%d pairs across nodes: sent %d, acked %d, delivered %d of %d, lost %d, duplicates %d",
		rep.Pairs, tr.Sent, tr.Acked, tr.Delivered, tr.Expected, tr.Lost, tr.Duplicates)
}

// friendState logs o in at addr and returns how its LOGIN_ACK lists
// friend uid ("online" or "offline"): what the other users see.
func friendState(t *testing.T, addr string, o *member, uid codec.UserID) (string, error) {
	c, err := client.Dial(ctxT(t, 5*time.Second), addr, client.Options{})
	if err != nil {
		return "", err
	}
	defer c.Close()
	ack, err := c.Login(ctxT(t, 10*time.Second), o.id, o.password)
	if err != nil {
		return "", err
	}
	for _, f := range ack.Friends {
		if f.ID == uid {
			return f.State, nil
		}
	}
	return "", fmt.Errorf("friend %d not listed", uid)
}

// wantState polls until o, logging in at addr, sees each of uids in state.
func wantState(t *testing.T, addr string, o *member, state string, timeout time.Duration, uids ...codec.UserID) {
	t.Helper()
	checkFor(t, timeout, func() error {
		for _, uid := range uids {
			if st, err := friendState(t, addr, o, uid); err != nil || st != state {
				return fmt.Errorf("user %d reads %q (%v), want %q", uid, st, err, state)
			}
		}
		return nil
	})
}

// loginPassword logs m in at addr with its password (not a token).
func loginPassword(t *testing.T, addr string, m *member) *client.Client {
	t.Helper()
	c, err := client.Dial(ctxT(t, 5*time.Second), addr, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Login(ctxT(t, 10*time.Second), m.id, m.password); err != nil {
		t.Fatalf("%s: password login at %s: %v", m.name, addr, err)
	}
	return c
}

// TestKillNodeRelogin: the original left a crashed server's users online
// forever, so they could never log in again. Here, after kill -9 of node1:
// its users read offline to others once its lease (3 s) runs out; one logs
// in again with the password on node2; node1 restarts under the same node
// id without bringing the other back online (it would, had the new run's
// lease vouched for the old run's presence); and that one logs in again
// with the password on the restarted node1.
func TestKillNodeRelogin(t *testing.T) {
	c := startCluster(t, 2)
	node1, node2 := c.nodes[0], c.nodes[1]
	vs := online(t, c, "v", 2, node1.addr)
	away, back := vs[0], vs[1]
	o := signup(t, node2.addr, "observer")
	for _, v := range vs {
		if err := v.client().AddFriend(ctxT(t, 5*time.Second), o.id); err != nil {
			t.Fatal(err)
		}
	}
	wantState(t, node2.addr, o, codec.StateOnline, 5*time.Second, away.id, back.id)

	node1.kill()
	killed := time.Now()
	wantState(t, node2.addr, o, codec.StateOffline, 10*time.Second, away.id, back.id)
	t.Logf("node1's users read offline %v after kill -9 (lease 3 s)", time.Since(killed).Round(10*time.Millisecond))

	loginPassword(t, node2.addr, back)
	wantState(t, node2.addr, o, codec.StateOnline, 5*time.Second, back.id)

	if err := node1.start(); err != nil {
		t.Fatal(err)
	}
	// The restarted run renews node1's lease at once; user "away" must not
	// read online for it, now or a moment later.
	for i := 0; i < 2; i++ {
		if st, err := friendState(t, node2.addr, o, away.id); err != nil || st != codec.StateOffline {
			t.Fatalf("after node1's restart, user %d (no session anywhere) reads %q (%v)", away.id, st, err)
		}
		time.Sleep(time.Second)
	}
	loginPassword(t, node1.addr, away)
	wantState(t, node2.addr, o, codec.StateOnline, 5*time.Second, away.id, back.id)
}
