package main

import (
	"bufio"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chatcluster/chatcluster/codec"
)

func TestCrossNodePairs(t *testing.T) {
	mk := func(nodes ...string) []*user {
		var us []*user
		for i, n := range nodes {
			us = append(us, &user{idx: i, node: n})
		}
		return us
	}
	rep := func(s string, n int) []string { return slices.Repeat([]string{s}, n) }
	for _, tc := range []struct {
		name  string
		nodes []string
		pairs int
	}{
		{"two even", slices.Concat(rep("a", 5), rep("b", 5)), 5},
		{"two interleaved", []string{"a", "b", "a", "b", "a", "b"}, 3},
		{"three", slices.Concat(rep("a", 3), rep("b", 3), rep("c", 2)), 4},
		{"three, odd count", slices.Concat(rep("a", 3), rep("b", 3), rep("c", 1)), 3},
		{"one node has most", slices.Concat(rep("a", 7), rep("b", 2), rep("c", 1)), 3},
		{"one node has half", slices.Concat(rep("a", 4), rep("b", 2), rep("c", 2)), 4},
	} {
		users := mk(tc.nodes...)
		got, m, err := crossNodePairs(users)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if m != tc.pairs || len(got) != len(users) {
			t.Fatalf("%s: %d pairs of %d users, want %d of %d", tc.name, m, len(got), tc.pairs, len(users))
		}
		seen := map[int]bool{}
		for _, u := range got {
			seen[u.idx] = true
		}
		if len(seen) != len(users) {
			t.Fatalf("%s: users lost or repeated: %d distinct of %d", tc.name, len(seen), len(users))
		}
		from := map[string]int{}
		for i := 0; i < m; i++ {
			if s, r := got[i], got[m+i]; s.node == r.node {
				t.Fatalf("%s: pair %d both on node %q", tc.name, i, s.node)
			}
			from[got[i].node]++
		}
		if len(from) < 2 {
			t.Errorf("%s: every sender on one node: %v", tc.name, from)
		}
	}
	if _, _, err := crossNodePairs(mk("a", "a", "a", "a")); err == nil || !strings.Contains(err.Error(), `all 4 users logged in on node "a"`) {
		t.Errorf("one node: %v", err)
	}
	if _, _, err := crossNodePairs(mk("a", "", "b", "b")); err == nil {
		t.Error("a user without a node was paired")
	}
}

// TestAckTurns checks that the acker spreads the connections' DELIVERED
// over its turns: each turn sends those of its own connections only, and
// one round of turns sends every pending one exactly once.
func TestAckTurns(t *testing.T) {
	const n = 2*ackSlices + 7
	w := newWorker(Config{Scenario: "chat", AckInterval: time.Hour})
	got := make(chan int, 4*n)
	for i := range n {
		cl, srv := net.Pipe()
		t.Cleanup(func() { _ = cl.Close(); _ = srv.Close() })
		c := newConn(cl)
		c.lastSeq.Store(int64(100 + i))
		w.users = append(w.users, &user{idx: i, c: c})
		go func() {
			br := bufio.NewReader(srv)
			for {
				body, err := readFrameBody(br)
				if err != nil {
					return
				}
				req, err := codec.ParseRequest(body)
				if err != nil || req.MsgID != codec.MsgDelivered || req.Seq == nil || *req.Seq != int64(100+i) {
					t.Errorf("user %d sent %s", i, body)
				}
				got <- i
			}
		}()
	}
	// take waits for want DELIVERED frames and then makes sure no more come.
	take := func(want int) []int {
		t.Helper()
		var us []int
		for len(us) < want {
			select {
			case u := <-got:
				us = append(us, u)
			case <-time.After(5 * time.Second):
				t.Fatalf("%d DELIVERED of %d: %v", len(us), want, us)
			}
		}
		select {
		case u := <-got:
			t.Fatalf("unexpected DELIVERED from user %d after %v", u, us)
		case <-time.After(20 * time.Millisecond):
		}
		return us
	}
	seen := map[int]int{}
	for turn := range ackSlices {
		want := 0
		for i := turn; i < n; i += ackSlices {
			want++
		}
		w.ackTurn(turn, ackSlices)
		for _, u := range take(want) {
			if u%ackSlices != turn {
				t.Errorf("turn %d sent user %d's DELIVERED", turn, u)
			}
			seen[u]++
		}
	}
	if len(seen) != n {
		t.Fatalf("one round of turns acked %d of %d users", len(seen), n)
	}
	for u, k := range seen {
		if k != 1 {
			t.Errorf("user %d acked %d times in one round", u, k)
		}
	}
	// Nothing new: a second round sends nothing.
	for turn := range ackSlices {
		w.ackTurn(turn, ackSlices)
	}
	take(0)
	for _, c := range []struct {
		every time.Duration
		turns int
	}{{100 * time.Millisecond, 20}, {20 * time.Millisecond, 20}, {10 * time.Millisecond, 10}, {time.Millisecond, 1}, {time.Microsecond, 1}, {time.Second, 20}} {
		if got := ackTurns(c.every); got != c.turns {
			t.Errorf("ackTurns(%v) = %d, want %d", c.every, got, c.turns)
		}
	}
}
