package store

import (
	"errors"
	"runtime"

	"golang.org/x/sys/unix"
)

// threadPriorities: each thread has a nice value of its own here.
const threadPriorities = true

// runOnOwnThread calls fn on a goroutine locked for good to an OS thread
// that is not the process's main thread, and returns when fn does: the
// calling goroutine, or, if that is on the main thread, a new one. Go ends
// a locked thread when its goroutine exits, so no other goroutine ever runs
// at a priority fn gives its thread; the main thread it never ends.
func runOnOwnThread(fn func()) {
	runtime.LockOSThread()
	if unix.Gettid() != unix.Getpid() {
		fn()
		return // still locked: the thread ends with the goroutine
	}
	// While this goroutine holds the main thread locked, the new one runs
	// on another.
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		fn()
	}()
	<-done
	runtime.UnlockOSThread()
}

// raiseThreadPriority lowers the calling thread's nice value by levels, to
// no lower than -20, or, where that is not permitted, as far as
// RLIMIT_NICE permits. It returns the thread's id and the nice value it
// has after. Call it inside runOnOwnThread.
func raiseThreadPriority(levels int) (tid, nice int, err error) {
	tid = unix.Gettid()
	// The system call returns 20 - nice (1..40), never a negative value.
	raw, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil {
		return tid, 0, err
	}
	cur := 20 - raw
	want := max(cur-min(levels, 40), -20) // 40 spans every nice value
	err = unix.Setpriority(unix.PRIO_PROCESS, tid, want)
	if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
		// RLIMIT_NICE allows nice values down to 20 - its soft limit.
		var rl unix.Rlimit
		if unix.Getrlimit(unix.RLIMIT_NICE, &rl) == nil {
			if floor := 20 - int(min(rl.Cur, 40)); floor > want && floor < cur {
				if unix.Setpriority(unix.PRIO_PROCESS, tid, floor) == nil {
					return tid, floor, err
				}
			}
		}
	}
	if err != nil {
		return tid, cur, err
	}
	return tid, want, nil
}
