package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/service"
)

// wantLimit fails unless err is a *service.LimitError of kind on id.
func wantLimit(t *testing.T, err error, kind service.LimitKind, id int64, count, max int) {
	t.Helper()
	var le *service.LimitError
	if !errors.As(err, &le) || !errors.Is(err, service.ErrLimit) || *le != (service.LimitError{Kind: kind, ID: id, Count: count, Max: max}) {
		t.Fatalf("error %v, want the limit %d on %d (%d of %d)", err, kind, id, count, max)
	}
}

// TestCaps: each cap refuses the write past it with a *LimitError (a
// friendship when either side is at the cap), and an existing friendship
// or membership is still ErrConflict.
func TestCaps(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		a, b, c, d := mustUser(t, s, "a"), mustUser(t, s, "b"), mustUser(t, s, "c"), mustUser(t, s, "d")
		for _, f := range []codec.UserID{b, c} {
			if err := s.AddFriend(ctx, a, f, 2); err != nil {
				t.Fatal(err)
			}
		}
		wantLimit(t, s.AddFriend(ctx, a, d, 2), service.LimitFriends, int64(a), 2, 2)
		wantLimit(t, s.AddFriend(ctx, d, a, 2), service.LimitFriends, int64(a), 2, 2)
		if err := s.AddFriend(ctx, b, a, 2); !errors.Is(err, service.ErrConflict) {
			t.Fatalf("existing friendship at the cap: %v", err)
		}
		if err := s.AddFriend(ctx, d, b, 2); err != nil {
			t.Fatal(err)
		}
		if fs, err := s.Friends(ctx, d); err != nil || len(fs) != 1 {
			t.Fatalf("d's friends after a refusal: %+v %v", fs, err)
		}

		g1, err := s.CreateGroup(ctx, a, "g1", "", 2)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.CreateGroup(ctx, a, "g2", "", 2); err != nil {
			t.Fatal(err)
		}
		_, err = s.CreateGroup(ctx, a, "g3", "", 2)
		wantLimit(t, err, service.LimitGroups, int64(a), 2, 2)
		gb, err := s.CreateGroup(ctx, b, "gb", "", 2)
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.JoinGroup(ctx, gb, a, 2, 0)
		wantLimit(t, err, service.LimitGroups, int64(a), 2, 2)
		if _, err := s.JoinGroup(ctx, g1, b, 2, 3); err != nil {
			t.Fatal(err)
		}
		if _, err := s.JoinGroup(ctx, g1, c, 2, 3); err != nil {
			t.Fatal(err)
		}
		_, err = s.JoinGroup(ctx, g1, d, 2, 3)
		wantLimit(t, err, service.LimitMembers, int64(g1), 3, 3)
		if _, err := s.JoinGroup(ctx, g1, c, 2, 3); !errors.Is(err, service.ErrConflict) {
			t.Fatalf("existing membership at the cap: %v", err)
		}
		if _, err := s.JoinGroup(ctx, 999, d, 2, 3); !errors.Is(err, service.ErrNotFound) {
			t.Fatalf("join of a missing group: %v", err)
		}
		sizes, err := s.GroupSizes(ctx, []codec.GroupID{g1, gb})
		if err != nil || sizes[g1] != 3 || sizes[gb] != 1 {
			t.Fatalf("sizes %v %v, want 3 and 1", sizes, err)
		}
		if gs, err := s.UserGroups(ctx, d); err != nil || len(gs) != 0 {
			t.Fatalf("d's groups after refusals: %+v %v", gs, err)
		}
	})
}

// TestCapsConcurrent: concurrent writes cannot pass a cap: joins of one
// group, friendships of one user, joins of one user.
func TestCapsConcurrent(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		const n, cap = 12, 4
		users := make([]codec.UserID, n)
		for i := range users {
			users[i] = mustUser(t, s, fmt.Sprintf("u%d", i))
		}
		owner := mustUser(t, s, "owner")
		gid, err := s.CreateGroup(ctx, owner, "g", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		var gids []codec.GroupID
		for i := range n {
			g, err := s.CreateGroup(ctx, users[i], fmt.Sprintf("own%d", i), "", 0)
			if err != nil {
				t.Fatal(err)
			}
			gids = append(gids, g)
		}
		joiner := mustUser(t, s, "joiner")
		// Each kind: n writes at once; count the successes and refusals.
		race := func(what string, write func(i int) error, kind service.LimitKind, want int) {
			t.Helper()
			var wg sync.WaitGroup
			errs := make([]error, n)
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs[i] = write(i)
				}()
			}
			wg.Wait()
			ok := 0
			for _, err := range errs {
				var le *service.LimitError
				switch {
				case err == nil:
					ok++
				case !errors.As(err, &le) || le.Kind != kind:
					t.Fatalf("%s: %v", what, err)
				}
			}
			if ok != want {
				t.Fatalf("%s: %d of %d succeeded, want %d", what, ok, n, want)
			}
		}
		race("joins of one group", func(i int) error {
			_, err := s.JoinGroup(ctx, gid, users[i], 0, cap)
			return err
		}, service.LimitMembers, cap-1) // the owner is one
		race("friendships of one user", func(i int) error { return s.AddFriend(ctx, users[i], owner, cap) }, service.LimitFriends, cap)
		race("joins of one user", func(i int) error {
			_, err := s.JoinGroup(ctx, gids[i], joiner, cap, 0)
			return err
		}, service.LimitGroups, cap)
		var members, friends, groups int
		for _, q := range []struct {
			n    *int
			sql  string
			args []any
		}{
			{&members, "SELECT COUNT(*) FROM group_members WHERE groupid = ?", []any{gid}},
			{&friends, "SELECT COUNT(*) FROM friends WHERE userid = ?", []any{owner}},
			{&groups, "SELECT COUNT(*) FROM group_members WHERE userid = ?", []any{joiner}},
		} {
			if err := s.DB().Get(q.n, q.sql, q.args...); err != nil {
				t.Fatal(err)
			}
		}
		sizes, err := s.GroupSizes(ctx, []codec.GroupID{gid})
		if members != cap || sizes[gid] != cap || friends != cap || groups != cap {
			t.Fatalf("members %d (counted %d, %v), friends %d, groups %d; want %d each", members, sizes[gid], err, friends, groups, cap)
		}
	})
}

// TestGroupUsers: pages of a group's members in id order, for members
// only.
func TestGroupUsers(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		ids := make([]codec.UserID, 7)
		for i := range ids {
			ids[i] = mustUser(t, s, fmt.Sprintf("u%d", i))
		}
		outsider := mustUser(t, s, "outsider")
		gid, err := s.CreateGroup(ctx, ids[3], "g", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		for i, id := range ids {
			if i != 3 {
				if _, err := s.JoinGroup(ctx, gid, id, 0, 0); err != nil {
					t.Fatal(err)
				}
			}
		}
		var got []service.Member
		for after := codec.UserID(0); ; {
			page, err := s.GroupUsers(ctx, gid, ids[0], after, 3)
			if err != nil {
				t.Fatal(err)
			}
			if len(page) == 0 {
				break
			}
			got = append(got, page...)
			after = page[len(page)-1].ID
		}
		if len(got) != len(ids) {
			t.Fatalf("%d members, want %d", len(got), len(ids))
		}
		for i, m := range got {
			role := map[bool]string{true: codec.RoleCreator, false: codec.RoleNormal}[i == 3]
			if m.ID != ids[i] || m.Name != fmt.Sprintf("u%d", i) || m.Role != role {
				t.Fatalf("member %d: %+v", i, m)
			}
		}
		if _, err := s.GroupUsers(ctx, gid, outsider, 0, 3); !errors.Is(err, service.ErrNotMember) {
			t.Fatalf("outsider: %v", err)
		}
		if _, err := s.GroupUsers(ctx, gid+1, ids[0], 0, 3); !errors.Is(err, service.ErrNotFound) {
			t.Fatalf("missing group: %v", err)
		}
	})
}
