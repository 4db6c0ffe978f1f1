// Command chatclient is the terminal client of chatcluster, modelled on the
// original muduo ChatClient: a start menu (login, register, quit), then the
// commands help, chat:friendid:message, addfriend:friendid,
// creategroup:groupname:groupdesc, addgroup:groupid,
// groupchat:groupid:message and loginout, plus friends, groups and quit. It
// can also run commands from -c flags or a pipe, for scripts. Run
// chatclient -h for the details.
package main

import "os"

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv))
}
