package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/chatcluster/chatcluster/codec"
)

// app runs commands on a session and prints their results; the interactive
// and the scripted front ends share it.
type app struct {
	s *session
	p *printer
}

// report prints err as one line, prefixed with the command's name.
func (a *app) report(name string, err error) {
	var de *dialErr
	if errors.As(err, &de) {
		a.p.Error(de.Error())
		return
	}
	if errors.Is(err, errNotLoggedIn) {
		a.p.Error(name + ": not logged in; log in first (login:userid:password)")
		return
	}
	a.p.Error(name + ": " + friendly(err))
}

// login logs in and prints the user's data and then the offline messages.
func (a *app) login(ctx context.Context, name string, id codec.UserID, password string) error {
	if _, err := a.s.Login(ctx, id, password); err != nil {
		a.report(name, err)
		return err
	}
	uid, uname := a.s.User()
	friends, groups, _ := a.s.Lists()
	a.p.Print(formatUser(uid, uname, friends, groups, a.p.color))
	if err := a.s.WaitPrinted(ctx, a.s.Start()); err != nil {
		return err
	}
	// Each group's backlog follows LOGIN_ACK: print it too before going
	// on, as the rest of the offline messages. A lost connection is not an
	// error here (the session reconnects by itself).
	if err := a.s.PrintBacklog(ctx); err != nil && ctx.Err() != nil {
		return err
	}
	return nil
}

// signup registers a user and prints its id as the original did.
func (a *app) signup(ctx context.Context, name, username, password string) error {
	id, err := a.s.Signup(ctx, username, password)
	if err != nil {
		a.report(name, err)
		return err
	}
	a.p.OK(fmt.Sprintf("%s register success, userid is %d, do not forget it!", sanitize(username), id))
	return nil
}

// execute runs one command other than quit and prints its result or its
// error; it returns the error.
func (a *app) execute(ctx context.Context, cmd Command) error {
	if cmd.NeedsLogin() && !a.s.LoggedIn() {
		a.report(cmd.Name, errNotLoggedIn)
		return errNotLoggedIn
	}
	var err error
	switch cmd.Kind {
	case CmdHelp:
		a.p.Print(helpText())
	case CmdChat:
		var at string
		if at, err = a.s.Chat(ctx, cmd.UserID, cmd.Text); err == nil {
			a.p.OK(fmt.Sprintf("sent to %d (%s)", cmd.UserID, at))
		}
	case CmdGroupChat:
		var at string
		if at, err = a.s.GroupChat(ctx, cmd.GroupID, cmd.Text); err == nil {
			a.p.OK(fmt.Sprintf("sent to group %d (%s)", cmd.GroupID, at))
		}
	case CmdAddFriend:
		if err = a.s.AddFriend(ctx, cmd.UserID); err == nil {
			a.p.OK(fmt.Sprintf("added friend %d", cmd.UserID))
		}
	case CmdCreateGroup:
		var gid codec.GroupID
		if gid, err = a.s.CreateGroup(ctx, cmd.Group, cmd.Desc); err == nil {
			a.p.OK(fmt.Sprintf("created group %d %s", gid, sanitize(cmd.Group)))
		}
	case CmdAddGroup:
		if err = a.s.AddGroup(ctx, cmd.GroupID); err == nil {
			a.p.OK(fmt.Sprintf("joined group %d", cmd.GroupID))
		}
	case CmdFriends:
		friends, _, at := a.s.Lists()
		a.p.Print(formatFriends(friends, a.p.color) + asOf(at))
	case CmdGroups:
		_, groups, at := a.s.Lists()
		a.p.Print(formatGroups(groups, a.p.color) + asOf(at))
	case CmdMembers:
		var users []codec.GroupUser
		if users, err = a.s.GroupUsers(ctx, cmd.GroupID); err == nil {
			a.p.Print(formatMembers(cmd.GroupID, users, a.p.color))
		}
	case CmdLogout:
		if err = a.s.Logout(ctx); err == nil {
			a.p.OK("logged out")
		}
	case CmdLogin:
		if a.s.LoggedIn() {
			err = errLoggedIn
			break
		}
		return a.login(ctx, cmd.Name, cmd.UserID, cmd.Password)
	case CmdSignup:
		return a.signup(ctx, cmd.Name, cmd.UserName, cmd.Password)
	default:
		err = fmt.Errorf("%s: not available here", cmd.Name)
		a.p.Error(err.Error())
		return err
	}
	if err != nil {
		a.report(cmd.Name, err)
	}
	return err
}
