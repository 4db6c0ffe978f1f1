package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"

	"github.com/chatcluster/chatcluster/codec"
)

// Kind is what a command does.
type Kind int

// The commands. The first seven are the original ChatClient's.
const (
	CmdHelp Kind = iota + 1
	CmdChat
	CmdAddFriend
	CmdCreateGroup
	CmdAddGroup
	CmdGroupChat
	CmdLogout
	CmdFriends
	CmdGroups
	CmdQuit
	CmdLogin
	CmdSignup
	CmdMembers
)

// Command is one parsed command line.
type Command struct {
	Kind     Kind
	Name     string        // the command's canonical name, e.g. "chat"
	UserID   codec.UserID  // chat, addfriend, login
	GroupID  codec.GroupID // groupchat, addgroup, members
	Text     string        // chat and groupchat message
	Group    string        // creategroup name
	Desc     string        // creategroup description
	UserName string        // signup
	Password string        // login, signup
}

// NeedsLogin reports whether the command needs a logged-in session.
func (c Command) NeedsLogin() bool {
	switch c.Kind {
	case CmdHelp, CmdQuit, CmdLogin, CmdSignup:
		return false
	}
	return true
}

// HasSecret reports whether the line held a password (never kept in history).
func (c Command) HasSecret() bool { return c.Kind == CmdLogin || c.Kind == CmdSignup }

// commandSpec describes one command for the parser and for help.
type commandSpec struct {
	kind  Kind
	name  string
	usage string
	help  string
}

var commandSpecs = []commandSpec{
	{CmdHelp, "help", "help", "show all commands"},
	{CmdChat, "chat", "chat:friendid:message", "one-to-one chat"},
	{CmdAddFriend, "addfriend", "addfriend:friendid", "add a friend"},
	{CmdCreateGroup, "creategroup", "creategroup:groupname:groupdesc", "create a group"},
	{CmdAddGroup, "addgroup", "addgroup:groupid", "join a group"},
	{CmdGroupChat, "groupchat", "groupchat:groupid:message", "group chat"},
	{CmdLogout, "loginout", "loginout", "log out and return to the start menu"},
	{CmdFriends, "friends", "friends", "list your friends, as of your login"},
	{CmdGroups, "groups", "groups", "list your groups and their members, as of your login"},
	{CmdMembers, "members", "members:groupid", "list all members of a group, now"},
	{CmdQuit, "quit", "quit", "exit chatclient"},
	{CmdLogin, "login", "login:userid:password", "log in (scripts; the menu asks instead)"},
	{CmdSignup, "signup", "signup:username:password", "register a new user (alias register)"},
}

// aliases maps extra accepted names to canonical ones.
var aliases = map[string]string{
	"logout":   "loginout",
	"exit":     "quit",
	"register": "signup",
}

// helpText is the list printed by help.
func helpText() string {
	var b strings.Builder
	for _, s := range commandSpecs {
		fmt.Fprintf(&b, "%-12s : %s, format %s\n", s.name, s.help, s.usage)
	}
	return b.String()
}

// errEmpty is returned by Parse for a blank line (or a # comment): nothing
// to do, and not an error to report.
var errEmpty = errors.New("empty line")

// Parse parses one command line. Commands are "name" or "name:arg:arg";
// the last argument of chat, groupchat, creategroup, login and signup takes
// the rest of the line, so it may contain ':'. Errors are one line, ready to
// print.
func Parse(line string) (Command, error) {
	line = strings.TrimRight(line, "\r\n")
	if strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "#") {
		return Command{}, errEmpty
	}
	head, rest, hasArgs := strings.Cut(line, ":")
	name := strings.ToLower(strings.TrimSpace(head))
	if a, ok := aliases[name]; ok {
		name = a
	}
	var spec *commandSpec
	for i := range commandSpecs {
		if commandSpecs[i].name == name {
			spec = &commandSpecs[i]
		}
	}
	if spec == nil {
		return Command{}, fmt.Errorf("unknown command \"%s\"; type help", sanitize(strings.TrimSpace(head)))
	}
	cmd := Command{Kind: spec.kind, Name: spec.name}
	usage := fmt.Errorf("%s: usage: %s", spec.name, spec.usage)
	switch spec.kind {
	case CmdHelp, CmdLogout, CmdFriends, CmdGroups, CmdQuit:
		if hasArgs && strings.TrimSpace(rest) != "" {
			return Command{}, fmt.Errorf("%s: takes no arguments", spec.name)
		}
	case CmdChat, CmdGroupChat:
		if !hasArgs {
			return Command{}, usage
		}
		idText, msg, ok := strings.Cut(rest, ":")
		what := "friend"
		if spec.kind == CmdGroupChat {
			what = "group"
		}
		id, err := parseID(idText)
		if err != nil {
			return Command{}, fmt.Errorf("%s: %s id must be a positive number", spec.name, what)
		}
		if !ok {
			return Command{}, usage
		}
		if isBlank(msg) {
			return Command{}, fmt.Errorf("%s: message is empty", spec.name)
		}
		cmd.Text = msg
		if spec.kind == CmdChat {
			cmd.UserID = codec.UserID(id)
		} else {
			cmd.GroupID = codec.GroupID(id)
		}
	case CmdAddFriend, CmdAddGroup, CmdMembers:
		if !hasArgs {
			return Command{}, usage
		}
		id, err := parseID(rest)
		if err != nil {
			if spec.kind == CmdAddFriend {
				return Command{}, fmt.Errorf("%s: friend id must be a positive number", spec.name)
			}
			return Command{}, fmt.Errorf("%s: group id must be a positive number", spec.name)
		}
		cmd.UserID, cmd.GroupID = codec.UserID(id), codec.GroupID(id)
	case CmdCreateGroup:
		if !hasArgs {
			return Command{}, usage
		}
		name, desc, _ := strings.Cut(rest, ":")
		name = strings.TrimSpace(name)
		if name == "" {
			return Command{}, fmt.Errorf("%s: group name is empty", spec.name)
		}
		cmd.Group, cmd.Desc = name, strings.TrimSpace(desc)
	case CmdLogin:
		if !hasArgs {
			return Command{}, usage
		}
		idText, pw, ok := strings.Cut(rest, ":")
		id, err := parseID(idText)
		if err != nil {
			return Command{}, fmt.Errorf("%s: user id must be a positive number", spec.name)
		}
		if !ok || pw == "" {
			return Command{}, fmt.Errorf("%s: password is empty", spec.name)
		}
		cmd.UserID, cmd.Password = codec.UserID(id), pw
	case CmdSignup:
		if !hasArgs {
			return Command{}, usage
		}
		name, pw, ok := strings.Cut(rest, ":")
		name = strings.TrimSpace(name)
		if name == "" {
			return Command{}, fmt.Errorf("%s: user name is empty", spec.name)
		}
		if !ok || pw == "" {
			return Command{}, fmt.Errorf("%s: password is empty", spec.name)
		}
		cmd.UserName, cmd.Password = name, pw
	}
	return cmd, nil
}

// parseID parses a positive decimal id, allowing surrounding spaces.
func parseID(s string) (int64, error) {
	s = strings.TrimSpace(s)
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || strings.HasPrefix(s, "+") {
		return 0, errors.New("not a positive number")
	}
	return n, nil
}

func isBlank(s string) bool {
	return strings.IndexFunc(s, func(r rune) bool { return !unicode.IsSpace(r) }) < 0
}
