// Package conf loads chatserver's configuration from, in rising precedence:
// built-in defaults, a YAML file (-config), CHAT_* environment variables and
// command-line flags. Every option has the same name in all three: flag
// -max-frame, YAML key max-frame, variable CHAT_MAX_FRAME.
package conf

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// ErrHelp is returned by Load for -h or -help.
var ErrHelp = flag.ErrHelp

// Config is chatserver's configuration.
type Config struct {
	Listen string // TCP listen address
	DB     string // sqlite:PATH or mysql:USER:PASS@tcp(HOST:PORT)/DB
	Redis  string // host:port of Redis; empty = single node, in-process bus
	NodeID string // this node's id in the cluster, sent to clients in LOGIN_ACK; default hostname:port
	// RedisPrefix starts every Redis key and channel, so several clusters
	// can share one Redis.
	RedisPrefix string
	// PresenceLease: a node that stops renewing it has its users read as
	// offline after this long.
	PresenceLease time.Duration

	MaxFrame        int
	MaxMessage      int
	MaxConns        int
	IdleTimeout     time.Duration
	Rate            float64
	RateBurst       float64
	MaxPending      int
	MaxPendingBytes int
	MaxOutbound     int
	Workers         int
	EventLoops      int
	// MemReleaseIdle: once the process has been quiet this long after
	// work, free memory goes back to the operating system; negative
	// disables, 0 means the default.
	MemReleaseIdle time.Duration
	// WriterPriority (SQLite, Linux): the group-commit writer's thread runs
	// this many nice levels above the rest of the node; negative leaves
	// it alone, 0 means the default (store.Config.WriterPriority).
	WriterPriority int

	BcryptCost int
	TokenTTL   time.Duration
	OfflineCap int

	// LoginGroupUsers is the largest group whose members LOGIN_ACK lists,
	// LoginUsers the most members it lists in all; the other groups come
	// with their size only (GROUP_USERS pages through them).
	LoginGroupUsers int
	LoginUsers      int
	// MaxFriends, MaxGroups and MaxGroupMembers cap a user's friends, the
	// groups a user is in and a group's members (errno 11 past them).
	MaxFriends      int
	MaxGroups       int
	MaxGroupMembers int
	// PasswordWorkers bounds the bcrypt hashes (SIGNUP, password LOGIN)
	// that run at once; 0 or less: half the CPUs, at least 1 (chatserver
	// resolves it before it adds Ps for the event loops and the writer).
	PasswordWorkers int

	LogLevel  string
	LogFormat string

	// Migrate applies the schema migrations and exits.
	Migrate bool
	// Pprof, when set, serves net/http/pprof on this address (keep it on
	// loopback: it is unauthenticated).
	Pprof string
}

// Default returns the built-in defaults.
func Default() Config {
	return Config{
		Listen:          "127.0.0.1:6000",
		DB:              "sqlite:chat.db",
		RedisPrefix:     "chat:",
		PresenceLease:   15 * time.Second,
		MaxFrame:        65536,
		MaxMessage:      4096,
		MaxConns:        100000,
		IdleTimeout:     90 * time.Second,
		Rate:            1000,
		RateBurst:       0, // twice Rate
		MaxPending:      256,
		MaxPendingBytes: 0, // 1 MiB, or max-frame if that is more
		MaxOutbound:     8 << 20,
		Workers:         256,
		MemReleaseIdle:  5 * time.Second,
		WriterPriority:  10,
		BcryptCost:      10,
		TokenTTL:        7 * 24 * time.Hour,
		OfflineCap:      500,
		LoginGroupUsers: 1000,
		LoginUsers:      10000,
		MaxFriends:      5000,
		MaxGroups:       1000,
		MaxGroupMembers: 100000,
		LogLevel:        "info",
		LogFormat:       "text",
	}
}

func (c *Config) flagSet(out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("chatserver", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.String("config", "", "YAML configuration file")
	fs.StringVar(&c.Listen, "listen", c.Listen, "TCP listen address")
	fs.StringVar(&c.DB, "db", c.DB, "database: sqlite:PATH or mysql:USER:PASS@tcp(HOST:PORT)/DB")
	fs.StringVar(&c.Redis, "redis", c.Redis, "Redis host:port for a cluster; empty runs a single node")
	fs.StringVar(&c.NodeID, "node-id", c.NodeID, "node id in the cluster, also sent to clients in LOGIN_ACK (default hostname:port)")
	fs.StringVar(&c.RedisPrefix, "redis-prefix", c.RedisPrefix, "prefix of every Redis key and channel")
	fs.DurationVar(&c.PresenceLease, "presence-lease", c.PresenceLease, "a dead node's users read offline after this long")
	fs.IntVar(&c.MaxFrame, "max-frame", c.MaxFrame, "largest frame body in bytes")
	fs.IntVar(&c.MaxMessage, "max-message", c.MaxMessage, "largest chat message text in bytes")
	fs.IntVar(&c.MaxConns, "max-conns", c.MaxConns, "most open connections (0: the default)")
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", c.IdleTimeout, "close a connection silent this long (PING keeps it alive)")
	fs.Float64Var(&c.Rate, "rate", c.Rate, "requests per second per connection (negative: unlimited, 0: the default)")
	fs.Float64Var(&c.RateBurst, "rate-burst", c.RateBurst, "request burst per connection (0: twice rate)")
	fs.IntVar(&c.MaxPending, "max-pending", c.MaxPending, "requests queued per connection before errno 8")
	fs.IntVar(&c.MaxPendingBytes, "max-pending-bytes", c.MaxPendingBytes, "bytes queued per connection before errno 8, at least max-frame (0: 1 MiB, or max-frame if more)")
	fs.IntVar(&c.MaxOutbound, "max-outbound", c.MaxOutbound, "unsent bytes per connection before it is closed as a slow consumer")
	fs.IntVar(&c.Workers, "workers", c.Workers, "request handler goroutines")
	fs.IntVar(&c.EventLoops, "event-loops", c.EventLoops, "gnet event loops (0: one per CPU but one, at least one)")
	fs.DurationVar(&c.MemReleaseIdle, "mem-release-idle", c.MemReleaseIdle, "return free memory to the OS once quiet this long after work (negative: never, 0: the default)")
	fs.IntVar(&c.WriterPriority, "writer-priority", c.WriterPriority, "nice levels the SQLite writer thread runs above the rest of the node; needs root, CAP_SYS_NICE or RLIMIT_NICE (negative: leave it alone, 0: the default)")
	fs.IntVar(&c.BcryptCost, "bcrypt-cost", c.BcryptCost, "bcrypt cost for new passwords (4..31)")
	fs.DurationVar(&c.TokenTTL, "token-ttl", c.TokenTTL, "session token lifetime")
	fs.IntVar(&c.OfflineCap, "offline-cap", c.OfflineCap, "most offline messages inside LOGIN_ACK, the rest follow at once (0: the default)")
	fs.IntVar(&c.LoginGroupUsers, "login-group-users", c.LoginGroupUsers, "LOGIN_ACK lists the members of groups of at most this many (0: the default)")
	fs.IntVar(&c.LoginUsers, "login-users", c.LoginUsers, "most group members one LOGIN_ACK lists, all groups together (0: the default)")
	fs.IntVar(&c.MaxFriends, "max-friends", c.MaxFriends, "most friends a user may have (0: the default)")
	fs.IntVar(&c.MaxGroups, "max-groups", c.MaxGroups, "most groups a user may be in (0: the default)")
	fs.IntVar(&c.MaxGroupMembers, "max-group-members", c.MaxGroupMembers, "most members a group may have (0: the default)")
	fs.IntVar(&c.PasswordWorkers, "password-workers", c.PasswordWorkers, "bcrypt hashes (SIGNUP, password LOGIN) run at once; the rest wait (0: half the CPUs, at least 1)")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "text or json")
	fs.BoolVar(&c.Migrate, "migrate", c.Migrate, "apply the database schema migrations and exit")
	fs.StringVar(&c.Pprof, "pprof", c.Pprof, "serve net/http/pprof on this address, e.g. 127.0.0.1:6060 (unauthenticated: keep it on loopback)")
	return fs
}

// Load builds the configuration from args (without the program name), the
// environment (getenv, usually os.Getenv) and the file named by -config.
func Load(args []string, getenv func(string) string, usage io.Writer) (Config, error) {
	c := Default()
	fs := c.flagSet(usage)
	path := configPath(args, getenv)
	if path != "" {
		raw, err := os.ReadFile(path)
		if err != nil {
			return c, fmt.Errorf("conf: %w", err)
		}
		var m map[string]any
		if err := yaml.Unmarshal(raw, &m); err != nil {
			return c, fmt.Errorf("conf: %s: %w", path, err)
		}
		for k, v := range m {
			if k == "config" || fs.Lookup(k) == nil {
				return c, fmt.Errorf("conf: %s: unknown option %q", path, k)
			}
			if v == nil {
				v = "" // "key:" with no value
			}
			if err := fs.Set(k, fmt.Sprint(v)); err != nil {
				return c, fmt.Errorf("conf: %s: %s: %w", path, k, badValue(fs.Lookup(k), fmt.Sprint(v), err))
			}
		}
	}
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "config" {
			return
		}
		if v := getenv(EnvName(f.Name)); v != "" && envErr == nil {
			if err := fs.Set(f.Name, v); err != nil {
				envErr = fmt.Errorf("conf: %s: %w", EnvName(f.Name), badValue(f, v, err))
			}
		}
	})
	if envErr != nil {
		return c, envErr
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("conf: unexpected argument %q", fs.Arg(0))
	}
	return c, c.Validate()
}

// badValue says which value of f was refused and what f takes (the flag
// package's own error says only "parse error").
func badValue(f *flag.Flag, v string, err error) error {
	want := ""
	if g, ok := f.Value.(flag.Getter); ok {
		switch g.Get().(type) {
		case time.Duration:
			want = "a duration such as 90s, 5m or 1h30m"
		case int, int64, uint, uint64:
			want = "a whole number"
		case float64:
			want = "a number"
		case bool:
			want = "true or false"
		}
	}
	if want == "" {
		return fmt.Errorf("%q: %w", v, err)
	}
	return fmt.Errorf("%q is not %s", v, want)
}

// EnvName is the environment variable of option name: CHAT_MAX_FRAME.
func EnvName(name string) string {
	return "CHAT_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// configPath finds -config (or --config) among args before they are parsed.
func configPath(args []string, getenv func(string) string) string {
	path := getenv("CHAT_CONFIG")
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			break
		}
		name, value, hasValue := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-"), "=")
		if !strings.HasPrefix(a, "-") || name != "config" {
			continue
		}
		if hasValue {
			path = value
		} else if i+1 < len(args) {
			path = args[i+1]
			i++
		}
	}
	return path
}

// MaxOfflineCap is the largest offline-cap: a LOGIN_ACK's offline messages
// must fit a client's delivery buffer before its login call returns
// (chatclient's holds 4096), and what is over the cap follows LOGIN_ACK at
// once anyway.
const MaxOfflineCap = 4096

// MinPresenceLease is the shortest presence-lease: a node renews its lease
// every third of it, and a renewal late by more than that has its users
// read offline.
const MinPresenceLease = time.Second

// Validate checks ranges.
func (c Config) Validate() error {
	var errs []error
	if c.MaxFrame < 64 {
		errs = append(errs, errors.New("max-frame must be at least 64"))
	}
	if c.MaxMessage < 1 || c.MaxMessage > c.MaxFrame || c.MaxMessage > 1<<20 {
		errs = append(errs, errors.New("max-message must be 1..max-frame and at most 1 MiB"))
	}
	if c.MaxFrame > 1<<30 || c.MaxPendingBytes > 1<<30 {
		errs = append(errs, errors.New("max-frame and max-pending-bytes must be at most 1 GiB"))
	}
	if c.MaxPendingBytes > 0 && c.MaxPendingBytes < c.MaxFrame { // 0 or below: the default, at least max-frame
		// Otherwise a frame between the two is refused with errno 8 ("retry
		// later") even on an idle connection, at every retry.
		errs = append(errs, errors.New("max-pending-bytes must be at least max-frame"))
	}
	if burst := c.RateBurst; c.Rate > 0 {
		if burst <= 0 {
			burst = 2 * c.Rate
		}
		if burst < 1 {
			errs = append(errs, errors.New("rate-burst (by default twice rate) must be at least 1, or no request is ever admitted"))
		}
	}
	if c.OfflineCap > MaxOfflineCap {
		errs = append(errs, fmt.Errorf("offline-cap must be at most %d", MaxOfflineCap))
	}
	if c.BcryptCost < 4 || c.BcryptCost > 31 {
		errs = append(errs, errors.New("bcrypt-cost must be 4..31"))
	}
	if c.IdleTimeout <= 0 || c.TokenTTL <= 0 {
		errs = append(errs, errors.New("idle-timeout and token-ttl must be positive"))
	}
	if c.Redis != "" && c.PresenceLease < MinPresenceLease {
		// Renewed every third of it over the network: shorter would
		// have live nodes' users read offline.
		errs = append(errs, fmt.Errorf("presence-lease must be at least %v", MinPresenceLease))
	}
	if _, err := c.Level(); err != nil {
		errs = append(errs, fmt.Errorf("log-level must be debug, info, warn or error, not %q", c.LogLevel))
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		errs = append(errs, errors.New("log-format must be text or json"))
	}
	return errors.Join(errs...)
}

// Level parses LogLevel.
func (c Config) Level() (slog.Level, error) {
	var l slog.Level
	err := l.UnmarshalText([]byte(c.LogLevel))
	return l, err
}

// Logger builds the slog logger the configuration asks for. It passes on
// a warning or error with the same message at most once a
// LogRepeatInterval, the next one counting those it dropped
// ("suppressed").
func (c Config) Logger(w io.Writer) *slog.Logger {
	level, _ := c.Level()
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if c.LogFormat == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	return slog.New(newThrottle(h, LogRepeatInterval, time.Now))
}
