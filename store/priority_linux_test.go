package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"runtime"
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

// tidHandler records the thread each "group commit" record (logged by
// the writer, in commit) was logged on.
type tidHandler struct {
	mu   *sync.Mutex
	tids map[int]int
}

func (h tidHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h tidHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h tidHandler) WithGroup(string) slog.Handler            { return h }
func (h tidHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "group commit" {
		h.mu.Lock()
		h.tids[unix.Gettid()]++
		h.mu.Unlock()
	}
	return nil
}

// mainHandoff is what TestMain saw: whether it ran on the main thread
// (init locked it there), and the thread runOnOwnThread ran fn on.
var mainHandoff struct {
	onMain bool
	tid    int
}

// Keeps the main goroutine, and so TestMain, on the main thread.
func init() { runtime.LockOSThread() }

func TestMain(m *testing.M) {
	mainHandoff.onMain = unix.Gettid() == unix.Getpid()
	runOnOwnThread(func() { mainHandoff.tid = unix.Gettid() })
	os.Exit(m.Run())
}

// TestRunOnOwnThreadLeavesMainThread: called on the main thread, which Go
// never ends, runOnOwnThread runs fn on another thread, and that thread
// ends with fn.
func TestRunOnOwnThreadLeavesMainThread(t *testing.T) {
	if !mainHandoff.onMain {
		t.Fatal("TestMain did not run on the main thread")
	}
	if mainHandoff.tid == 0 || mainHandoff.tid == os.Getpid() {
		t.Fatalf("fn ran on thread %d, the main thread is %d", mainHandoff.tid, os.Getpid())
	}
	waitThreadGone(t, mainHandoff.tid)
}

// waitThreadGone fails t unless thread tid of this process ends within
// 10 s.
func waitThreadGone(t *testing.T, tid int) {
	t.Helper()
	waitFor(t, 10*time.Second, fmt.Sprintf("thread %d to end with its goroutine", tid), func() bool {
		_, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", tid))
		return errors.Is(err, os.ErrNotExist)
	})
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
	logged := tidHandler{mu: &sync.Mutex{}, tids: map[int]int{}}
	s, err := Open(context.Background(), Config{DSN: "sqlite:" + filepath.Join(t.TempDir(), "p.db"), Logger: slog.New(logged)})
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
	if nice != th.nice {
		t.Fatalf("writer thread nice %d, recorded %d", nice, th.nice)
	}
	want := max(base-10, -20)
	switch {
	case th.err == nil && nice != want:
		t.Fatalf("writer nice %d, want %d (process %d)", nice, want, base)
	case th.err != nil && !errors.Is(th.err, unix.EPERM) && !errors.Is(th.err, unix.EACCES):
		t.Fatalf("writer priority: %v", th.err)
	case th.err != nil && (nice < want || nice > base):
		t.Fatalf("unprivileged writer nice %d, outside %d..%d", nice, want, base)
	case th.err != nil:
		// Not permitted: as far as RLIMIT_NICE allows, where that is
		// between the process's and the wanted value.
		var rl unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_NICE, &rl); err != nil {
			t.Fatal(err)
		}
		if floor := 20 - int(min(rl.Cur, 40)); floor > want && floor < base && nice != floor {
			t.Fatalf("unprivileged writer nice %d, RLIMIT_NICE allows %d (process %d)", nice, floor, base)
		}
		t.Logf("writer priority not permitted here (%v): nice %d", th.err, nice)
	}

	// Every commit runs on that thread: the writer logs each one there.
	ctx := context.Background()
	from, to := mustUser(t, s, "prio-a"), mustUser(t, s, "prio-b")
	var wg sync.WaitGroup
	for i := range 2000 {
		wg.Add(1)
		s.SendAsync(ctx, service.SendRequest{From: from, FromName: "prio-a", To: []codec.UserID{to}, ToUser: to,
			Body: "hello", ClientMsgID: "p" + strconv.Itoa(i), UnixMilli: 1000},
			func(_ service.SendResult, err error) {
				if err != nil {
					t.Error(err)
				}
				wg.Done()
			})
	}
	wg.Wait()
	logged.mu.Lock()
	tids := maps.Clone(logged.tids)
	logged.mu.Unlock()
	if len(tids) != 1 || tids[th.tid] == 0 {
		t.Fatalf("commits logged on threads %v, the writer's is %d", tids, th.tid)
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	waitThreadGone(t, th.tid)
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
