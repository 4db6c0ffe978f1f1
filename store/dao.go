package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/service"
)

func nowMilli() int64 { return time.Now().UnixMilli() }

// The DAO functions below take sqlx.ExtContext or sqlx.QueryerContext so they
// run inside or outside a transaction.

func insertUser(ctx context.Context, q sqlx.ExtContext, name string, hash []byte, now int64) (codec.UserID, error) {
	res, err := q.ExecContext(ctx, "INSERT INTO users (name, password, created_ms) VALUES (?, ?, ?)", name, hash, now)
	if err != nil {
		return 0, err
	}
	id, err := res.LastInsertId()
	if err != nil {
		return 0, err
	}
	if _, err := q.ExecContext(ctx, "INSERT INTO inbox_state (userid, last_seq, acked_seq) VALUES (?, 0, 0)", id); err != nil {
		return 0, err
	}
	return codec.UserID(id), nil
}

// User is service.User, named here for the DAO signatures.
type User = service.User

// queryIn runs query, whose one "IN (?)" takes keys (sqlx.In), and scans
// each row.
func queryIn[K any](ctx context.Context, q sqlx.QueryerContext, query string, keys []K, scan func(rowScanner) error) error {
	query, args, err := sqlx.In(query, keys)
	if err != nil {
		return err
	}
	rows, err := q.QueryxContext(ctx, query, args...)
	return scanRows(rows, err, scan)
}

// selectMembers lists the members of each of gids, in (joined_ms, id)
// order, maxReadBatch groups a query; a group without members is left out.
func selectMembers(ctx context.Context, q sqlx.QueryerContext, gids []codec.GroupID) (map[codec.GroupID][]service.Member, error) {
	out := make(map[codec.GroupID][]service.Member, len(gids))
	for start := 0; start < len(gids); start += maxReadBatch {
		err := queryIn(ctx, q, "SELECT m.groupid, u.id, u.name, m.role FROM group_members m JOIN users u ON u.id = m.userid "+
			"WHERE m.groupid IN (?) ORDER BY m.groupid, m.joined_ms, u.id", gids[start:min(start+maxReadBatch, len(gids))],
			func(rows rowScanner) error {
				var gid codec.GroupID
				var m service.Member
				if err := rows.Scan(&gid, &m.ID, &m.Name, &m.Role); err != nil {
					return err
				}
				out[gid] = append(out[gid], m)
				return nil
			})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// lockUsers reads which of ids are users, locking their rows (lock is ""
// or the dialect's forUpdate) in id order: a write that locks a user's
// row first (a friendship, a join, a new group) waits for the others of
// that user, so what it counts stays true until it commits. SQLite's
// writes are serialised anyway.
func lockUsers(ctx context.Context, q sqlx.QueryerContext, lock string, ids ...codec.UserID) (map[codec.UserID]bool, error) {
	found := make(map[codec.UserID]bool, len(ids))
	err := queryIn(ctx, q, "SELECT id FROM users WHERE id IN (?) ORDER BY id"+lock, ids, func(rows rowScanner) error {
		var id codec.UserID
		err := rows.Scan(&id)
		found[id] = true
		return err
	})
	return found, err
}

// countPerUser counts, for each of ids, the rows of table (friends or
// group_members) whose userid it is; lock is "" or the dialect's forShare.
func countPerUser(ctx context.Context, q sqlx.QueryerContext, table, lock string, ids ...codec.UserID) (map[codec.UserID]int, error) {
	out := make(map[codec.UserID]int, len(ids))
	err := queryIn(ctx, q, "SELECT userid, COUNT(*) FROM "+table+" WHERE userid IN (?) GROUP BY userid"+lock, ids, func(rows rowScanner) error {
		var id codec.UserID
		var n int
		err := rows.Scan(&id, &n)
		out[id] = n
		return err
	})
	return out, err
}

// CreateUser implements service.Store.
func (s *Store) CreateUser(ctx context.Context, name string, hash []byte) (codec.UserID, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	var id codec.UserID
	err := s.inTx(ctx, func(tx *sqlx.Tx) error {
		var err error
		id, err = insertUser(ctx, tx, name, hash, nowMilli())
		return err
	})
	if isConflict(err) {
		return 0, service.ErrConflict
	}
	return id, unavailable(err)
}

// User implements service.Store.
func (s *Store) User(ctx context.Context, id codec.UserID) (User, error) {
	u, found, err := s.users.get(ctx, id)
	if err == nil && !found {
		return User{}, service.ErrNotFound
	}
	return u, unavailable(err)
}

// fetchUsers is the users' readBatcher fetch.
func (s *Store) fetchUsers(ctx context.Context, ids []codec.UserID) (map[codec.UserID]User, error) {
	out := make(map[codec.UserID]User, len(ids))
	err := queryIn(ctx, s.db, "SELECT id, name, password, token_version FROM users WHERE id IN (?)", ids, func(rows rowScanner) error {
		var u User
		if err := rows.Scan(&u.ID, &u.Name, &u.PasswordHash, &u.TokenVersion); err != nil {
			return err
		}
		out[u.ID] = u
		return nil
	})
	return out, err
}

// BumpTokenVersion implements service.Store.
func (s *Store) BumpTokenVersion(ctx context.Context, id codec.UserID) error {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	_, err := s.db.ExecContext(ctx, "UPDATE users SET token_version = token_version + 1 WHERE id = ?", id)
	return unavailable(err)
}

// AddFriend implements service.Store. Both users' rows are locked first
// (lockUsers), so the friend counts it checks after its inserts hold until
// it commits: concurrent friendships cannot exceed maxFriends. An existing
// friendship is ErrConflict whatever the counts.
func (s *Store) AddFriend(ctx context.Context, a, b codec.UserID, maxFriends int) error {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	err := s.inTx(ctx, func(tx *sqlx.Tx) error {
		found, err := lockUsers(ctx, tx, s.dialect.forUpdate, a, b)
		if err != nil {
			return err
		}
		if !found[b] {
			return service.ErrNotFound
		}
		now := nowMilli()
		if _, err := tx.ExecContext(ctx, "INSERT INTO friends (userid, friendid, created_ms) VALUES (?, ?, ?)", a, b, now); err != nil {
			return err
		}
		if _, err = tx.ExecContext(ctx, s.dialect.insertIgnore+" INTO friends (userid, friendid, created_ms) VALUES (?, ?, ?)", b, a, now); err != nil {
			return err
		}
		if maxFriends <= 0 {
			return nil
		}
		counts, err := countPerUser(ctx, tx, "friends", s.dialect.forShare, a, b)
		if err != nil {
			return err
		}
		for _, u := range []codec.UserID{a, b} {
			if n := counts[u]; n > maxFriends { // with the new one
				return &service.LimitError{Kind: service.LimitFriends, ID: int64(u), Count: n - 1, Max: maxFriends}
			}
		}
		return nil
	})
	if isConflict(err) {
		return service.ErrConflict
	}
	return unavailable(err)
}

// Friends implements service.Store.
func (s *Store) Friends(ctx context.Context, id codec.UserID) ([]service.Member, error) {
	return s.friends.value(ctx, id)
}

// fetchFriends is the friend lists' readBatcher fetch.
func (s *Store) fetchFriends(ctx context.Context, ids []codec.UserID) (map[codec.UserID][]service.Member, error) {
	out := make(map[codec.UserID][]service.Member, len(ids))
	err := queryIn(ctx, s.db, "SELECT f.userid, u.id, u.name FROM friends f JOIN users u ON u.id = f.friendid "+
		"WHERE f.userid IN (?) ORDER BY f.userid, u.id", ids, func(rows rowScanner) error {
		var owner codec.UserID
		var m service.Member
		if err := rows.Scan(&owner, &m.ID, &m.Name); err != nil {
			return err
		}
		out[owner] = append(out[owner], m)
		return nil
	})
	return out, err
}

// checkGroups returns a *service.LimitError when uid is in maxGroups
// groups (or more) besides those it joins in this transaction (added),
// and nil when maxGroups <= 0. The caller locked uid's row (lockUsers).
func (s *Store) checkGroups(ctx context.Context, tx *sqlx.Tx, uid codec.UserID, added, maxGroups int) error {
	if maxGroups <= 0 {
		return nil
	}
	counts, err := countPerUser(ctx, tx, "group_members", s.dialect.forShare, uid)
	if err != nil {
		return err
	}
	if n := counts[uid] - added; n >= maxGroups {
		return &service.LimitError{Kind: service.LimitGroups, ID: int64(uid), Count: n, Max: maxGroups}
	}
	return nil
}

// CreateGroup implements service.Store. The creator's row is locked first
// (lockUsers), so concurrent creations and joins cannot exceed maxGroups.
func (s *Store) CreateGroup(ctx context.Context, creator codec.UserID, name, desc string, maxGroups int) (codec.GroupID, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	var gid codec.GroupID
	err := s.inTx(ctx, func(tx *sqlx.Tx) error {
		if maxGroups > 0 {
			if _, err := lockUsers(ctx, tx, s.dialect.forUpdate, creator); err != nil {
				return err
			}
			if err := s.checkGroups(ctx, tx, creator, 0, maxGroups); err != nil {
				return err
			}
		}
		now := nowMilli()
		res, err := tx.ExecContext(ctx, "INSERT INTO chat_groups (groupname, groupdesc, creator, created_ms, members) VALUES (?, ?, ?, ?, 1)", name, desc, creator, now)
		if err != nil {
			return err
		}
		id, err := res.LastInsertId()
		if err != nil {
			return err
		}
		gid = codec.GroupID(id)
		_, err = tx.ExecContext(ctx, "INSERT INTO group_members (groupid, userid, role, joined_ms) VALUES (?, ?, ?, ?)", gid, creator, codec.RoleCreator, now)
		return err
	})
	if isConflict(err) {
		return 0, service.ErrConflict
	}
	return gid, unavailable(err)
}

// JoinGroup implements service.Store. The member's position starts at the
// log's last gseq as this transaction reads it (a locking read: on MySQL a
// plain one would see the transaction's older snapshot). A message stored
// after that, whose recipients were read before the join, is in the
// member's backlog, and the service notifies late members after each
// commit (Node.groupEntries).
//
// The caps are exact: the user's row is locked first (lockUsers), and the
// group's member count (chat_groups.members) goes up by a conditional
// update, which on MySQL locks the group's row until the commit. An
// existing membership is ErrConflict whatever the counts.
func (s *Store) JoinGroup(ctx context.Context, gid codec.GroupID, uid codec.UserID, maxGroups, maxMembers int) (codec.Seq, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	var start int64
	err := s.inTx(ctx, func(tx *sqlx.Tx) error {
		if maxGroups > 0 {
			if _, err := lockUsers(ctx, tx, s.dialect.forUpdate, uid); err != nil {
				return err
			}
		}
		// A group that does not exist has no members to conflict with; the
		// update below finds it missing and the insert is rolled back.
		if _, err := tx.ExecContext(ctx, "INSERT INTO group_members (groupid, userid, role, joined_ms) VALUES (?, ?, ?, ?)", gid, uid, codec.RoleNormal, nowMilli()); err != nil {
			return err
		}
		query, args := "UPDATE chat_groups SET members = members + 1 WHERE id = ?", []any{gid}
		if maxMembers > 0 {
			query, args = query+" AND members < ?", append(args, maxMembers)
		}
		res, err := tx.ExecContext(ctx, query, args...)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			if err != nil {
				return err
			}
			var members []int
			if err := tx.SelectContext(ctx, &members, "SELECT members FROM chat_groups WHERE id = ?", gid); err != nil {
				return err
			}
			if len(members) == 0 {
				return service.ErrNotFound
			}
			return &service.LimitError{Kind: service.LimitMembers, ID: int64(gid), Count: members[0], Max: maxMembers}
		}
		if err := s.checkGroups(ctx, tx, uid, 1, maxGroups); err != nil {
			return err
		}
		if err := tx.GetContext(ctx, &start, "SELECT COALESCE(MAX(last_seq), 0) FROM group_state WHERE groupid = ?"+s.dialect.forUpdate, gid); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, fmt.Sprintf(s.dialect.ackGroup, "(?, ?, ?)"), uid, gid, start)
		return err
	})
	if isConflict(err) {
		return 0, service.ErrConflict
	}
	return codec.Seq(start), unavailable(err)
}

// GroupMembers implements service.Store.
func (s *Store) GroupMembers(ctx context.Context, gid codec.GroupID) ([]service.Member, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	byGroup, err := selectMembers(ctx, s.db, []codec.GroupID{gid})
	m := byGroup[gid]
	if err == nil && len(m) == 0 {
		// Every group has its creator as a member, so none means no group.
		return nil, service.ErrNotFound
	}
	return m, unavailable(err)
}

// GroupSizes implements service.Store: one query for all of gids, which
// reads each group's member count (chat_groups.members, kept by the
// transactions that add members) instead of counting its members.
func (s *Store) GroupSizes(ctx context.Context, gids []codec.GroupID) (map[codec.GroupID]int, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	out := make(map[codec.GroupID]int, len(gids))
	if len(gids) == 0 {
		return out, nil
	}
	err := queryIn(ctx, s.db, "SELECT id, members FROM chat_groups WHERE id IN (?)", gids, func(rows rowScanner) error {
		var gid codec.GroupID
		var n int
		err := rows.Scan(&gid, &n)
		out[gid] = n
		return err
	})
	return out, unavailable(err)
}

// UserGroups implements service.Store.
func (s *Store) UserGroups(ctx context.Context, uid codec.UserID) ([]service.Group, error) {
	return s.groups.value(ctx, uid)
}

// GroupMembersOf implements service.Store: the members of every group a
// batch of callers asks for, in one query per maxReadBatch groups.
func (s *Store) GroupMembersOf(ctx context.Context, gids []codec.GroupID) (map[codec.GroupID][]service.Member, error) {
	m, err := s.members.getAll(ctx, gids)
	return m, unavailable(err)
}

// GroupUsers implements service.Store: a page in the order of the
// group_members primary key (groupid, userid).
func (s *Store) GroupUsers(ctx context.Context, gid codec.GroupID, member, after codec.UserID, limit int) ([]service.Member, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	var group, isMember int
	err := s.db.QueryRowxContext(ctx, "SELECT (SELECT COUNT(*) FROM chat_groups WHERE id = ?), "+
		"(SELECT COUNT(*) FROM group_members WHERE groupid = ? AND userid = ?)", gid, gid, member).Scan(&group, &isMember)
	switch {
	case err != nil:
		return nil, unavailable(err)
	case group == 0:
		return nil, service.ErrNotFound
	case isMember == 0:
		return nil, service.ErrNotMember
	}
	out := []service.Member{}
	rows, err := s.db.QueryxContext(ctx, "SELECT u.id, u.name, m.role FROM group_members m JOIN users u ON u.id = m.userid "+
		"WHERE m.groupid = ? AND m.userid > ? ORDER BY m.userid LIMIT ?", gid, after, limit)
	err = scanRows(rows, err, func(rows rowScanner) error {
		var m service.Member
		err := rows.Scan(&m.ID, &m.Name, &m.Role)
		out = append(out, m)
		return err
	})
	return out, unavailable(err)
}

// fetchUserGroups is the group lists' readBatcher fetch: each user's groups
// with their sizes, in one query for the whole batch. It reads no members:
// the service asks for those of the groups it lists (GroupMembersOf).
func (s *Store) fetchUserGroups(ctx context.Context, ids []codec.UserID) (map[codec.UserID][]service.Group, error) {
	out := make(map[codec.UserID][]service.Group, len(ids))
	err := queryIn(ctx, s.db,
		"SELECT m.userid, g.id, g.groupname, g.groupdesc, g.members, COALESCE(gs.last_seq, 0), COALESCE(ms.acked_seq, 0) "+
			"FROM group_members m JOIN chat_groups g ON g.id = m.groupid "+
			"LEFT JOIN group_state gs ON gs.groupid = m.groupid "+
			"LEFT JOIN member_state ms ON ms.userid = m.userid AND ms.groupid = m.groupid "+
			"WHERE m.userid IN (?) ORDER BY m.userid, g.id", ids, func(rows rowScanner) error {
			var (
				uid         codec.UserID
				g           service.Group
				last, acked int64
			)
			if err := rows.Scan(&uid, &g.ID, &g.Name, &g.Desc, &g.Size, &last, &acked); err != nil {
				return err
			}
			g.Last, g.Acked = codec.Seq(last), codec.Seq(min(acked, last))
			out[uid] = append(out[uid], g)
			return nil
		})
	return out, err
}

type inboxRow struct {
	Seq       int64  `db:"seq"`
	Kind      int    `db:"kind"`
	FromID    int64  `db:"fromid"`
	FromName  string `db:"fromname"`
	ToID      int64  `db:"toid"`
	GroupID   int64  `db:"groupid"`
	Body      string `db:"body"`
	CreatedMS int64  `db:"created_ms"`
}

// Delivery builds the wire delivery of a stored inbox row.
func (r inboxRow) delivery() codec.Delivery {
	return codec.Delivery{
		MsgID: codec.MsgID(r.Kind), ID: codec.UserID(r.FromID), Name: r.FromName,
		ToID: codec.UserID(r.ToID), GroupID: codec.GroupID(r.GroupID), Msg: r.Body,
		Time: codec.FormatTime(time.UnixMilli(r.CreatedMS)), Seq: codec.Seq(r.Seq),
	}
}

// Inbox implements service.Store. On SQLite it reads inbox and both inbox
// logs together (one snapshot); a row in both is the same row, and UNION
// keeps it once.
func (s *Store) Inbox(ctx context.Context, uid codec.UserID, after codec.Seq, limit int) ([]codec.Delivery, error) {
	from := func(table string) string {
		return "SELECT seq, kind, fromid, fromname, toid, groupid, body, created_ms FROM " + table + " WHERE userid = ? AND seq > ?"
	}
	if s.dialect.name == "sqlite" {
		return selectDeliveries[inboxRow](ctx, s, from("inbox")+" UNION "+from(inboxLog.name(0))+" UNION "+
			from(inboxLog.name(1))+" ORDER BY seq LIMIT ?", uid, after, uid, after, uid, after, limit)
	}
	return selectDeliveries[inboxRow](ctx, s, from("inbox")+" ORDER BY seq LIMIT ?", uid, after, limit)
}

// selectDeliveries runs a query for rows of type R and returns the
// delivery of each.
func selectDeliveries[R interface{ delivery() codec.Delivery }](ctx context.Context, s *Store, query string, args ...any) ([]codec.Delivery, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	var rows []R
	if err := s.db.SelectContext(ctx, &rows, query, args...); err != nil {
		return nil, unavailable(err)
	}
	out := make([]codec.Delivery, len(rows))
	for i, r := range rows {
		out[i] = r.delivery()
	}
	return out, nil
}

type groupLogRow struct {
	GroupID   int64  `db:"groupid"`
	Seq       int64  `db:"seq"`
	FromID    int64  `db:"fromid"`
	FromName  string `db:"fromname"`
	Body      string `db:"body"`
	CreatedMS int64  `db:"created_ms"`
}

// delivery builds the wire delivery of a stored group log row.
func (r groupLogRow) delivery() codec.Delivery {
	return codec.Delivery{
		MsgID: codec.MsgGroupChat, ID: codec.UserID(r.FromID), Name: r.FromName,
		GroupID: codec.GroupID(r.GroupID), Msg: r.Body,
		Time: codec.FormatTime(time.UnixMilli(r.CreatedMS)), GSeq: codec.Seq(r.Seq),
	}
}

// GroupLog implements service.Store.
func (s *Store) GroupLog(ctx context.Context, gid codec.GroupID, after codec.Seq, limit int) ([]codec.Delivery, error) {
	return selectDeliveries[groupLogRow](ctx, s,
		"SELECT groupid, seq, fromid, fromname, body, created_ms FROM group_log WHERE groupid = ? AND seq > ? ORDER BY seq LIMIT ?", gid, after, limit)
}

// InboxState implements service.Store.
func (s *Store) InboxState(ctx context.Context, uid codec.UserID) (last, acked codec.Seq, err error) {
	st, err := s.inboxStates.value(ctx, uid) // no row: 0, 0
	return st[0], st[1], err
}

// fetchInboxStates is the inbox states' readBatcher fetch: last and acked
// seq per user.
func (s *Store) fetchInboxStates(ctx context.Context, ids []codec.UserID) (map[codec.UserID][2]codec.Seq, error) {
	out := make(map[codec.UserID][2]codec.Seq, len(ids))
	err := queryIn(ctx, s.db, s.dialect.inboxStates, ids, func(rows rowScanner) error {
		var id codec.UserID
		var st [2]codec.Seq
		if err := rows.Scan(&id, &st[0], &st[1]); err != nil {
			return err
		}
		out[id] = st
		return nil
	})
	return out, err
}
