package main

import (
	"slices"
	"strings"
	"testing"
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
