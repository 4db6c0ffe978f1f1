package main

import (
	"log/slog"
	"syscall"
)

// raiseFileLimit lifts the soft open-file limit to the hard one, so a node
// can hold as many connections as the machine allows.
func raiseFileLimit(log *slog.Logger) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			log.Warn("cannot raise open-file limit", "err", err)
			return
		}
	}
	log.Debug("open-file limit", "soft", l.Cur)
}
