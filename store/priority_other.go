//go:build !linux

package store

import "errors"

// threadPriorities: threads keep their process's priority here (Linux
// only), so the writer runs on the runtime's shared threads.
const threadPriorities = false

func runOnOwnThread(fn func()) { fn() }

func raiseThreadPriority(int) (tid, nice int, err error) { return 0, 0, errors.ErrUnsupported }
