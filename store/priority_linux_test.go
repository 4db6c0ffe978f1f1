package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/service"
)

// threadNice is the nice value of thread tid (0: the process's main
// thread), field 19 of /proc/self/task/TID/stat.
func threadNice(tid int) (int, error) {
	path := "/proc/self/stat"
	if tid != 0 {
		path = fmt.Sprintf("/proc/self/task/%d/stat", tid)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	// The fields after the command name, which is in parentheses, start
	// at field 3 (state).
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	return strconv.Atoi(f[19-3])
}

// threadCPU is the time thread tid has run, in nanoseconds (schedstat).
func threadCPU(tid int) (int64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/schedstat", tid))
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.Fields(string(raw))[0], 10, 64)
}

// TestWriterPriority: the SQLite writer commits on a thread of its own,
// WriterPriority nice levels above the process where that is permitted
// (root, CAP_SYS_NICE), else as far as RLIMIT_NICE permits with the error
// kept; the thread ends with the store.
func TestWriterPriority(t *testing.T) {
	base, err := threadNice(0)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(context.Background(), Config{DSN: "sqlite:" + filepath.Join(t.TempDir(), "p.db")})
	if err != nil {
		t.Fatal(err)
	}
	<-s.batcher.threadSet
	th := s.batcher.thread
	if th.tid == 0 || th.tid == os.Getpid() {
		t.Fatalf("writer thread %d: not a thread of its own", th.tid)
	}
	nice, err := threadNice(th.tid)
	if err != nil {
		t.Fatal(err)
	}
	before, err := threadCPU(th.tid)
	if err != nil {
		t.Fatal(err)
	}
	if nice != th.nice {
		t.Fatalf("writer thread nice %d, recorded %d", nice, th.nice)
	}
	switch want := max(base-10, -20); {
	case th.err == nil && nice != want:
		t.Fatalf("writer nice %d, want %d (process %d)", nice, want, base)
	case th.err != nil && !errors.Is(th.err, unix.EPERM) && !errors.Is(th.err, unix.EACCES):
		t.Fatalf("writer priority: %v", th.err)
	case th.err != nil:
		// Not permitted: only as far as RLIMIT_NICE allows, if anywhere.
		var rl unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_NICE, &rl); err != nil {
			t.Fatal(err)
		}
		if floor := 20 - int(min(rl.Cur, 40)); nice != min(base, max(floor, want)) {
			t.Fatalf("unprivileged writer nice %d (process %d, RLIMIT_NICE floor %d)", nice, base, floor)
		}
		t.Logf("writer priority not permitted here (%v): nice %d", th.err, nice)
	}

	// Commits run on that thread: it gets the CPU time of a few thousand
	// sends, which the test's goroutines do not spend there.
	ctx := context.Background()
	from, to := mustUser(t, s, "prio-a"), mustUser(t, s, "prio-b")
	var wg sync.WaitGroup
	for i := range 4000 {
		wg.Add(1)
		s.SendAsync(ctx, service.SendRequest{From: from, FromName: "prio-a", To: []codec.UserID{to}, ToUser: to,
			Body: strings.Repeat("x", 100), ClientMsgID: "p" + strconv.Itoa(i), UnixMilli: 1000},
			func(_ service.SendResult, err error) {
				if err != nil {
					t.Error(err)
				}
				wg.Done()
			})
	}
	wg.Wait()
	if after, err := threadCPU(th.tid); err != nil || after-before < int64(time.Millisecond) {
		t.Fatalf("writer thread ran %d ns during 4000 sends (%v): the commits ran elsewhere", after-before, err)
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", th.tid)); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the writer's thread outlived the store")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestWriterPriorityOff: a negative WriterPriority leaves the writer on the
// runtime's shared threads.
func TestWriterPriorityOff(t *testing.T) {
	s := openStore(t, Config{DSN: "sqlite:" + filepath.Join(t.TempDir(), "p.db"), WriterPriority: -1})
	<-s.batcher.threadSet
	if th := s.batcher.thread; th != (writerThread{}) {
		t.Fatalf("writer thread %+v, want none", th)
	}
}
