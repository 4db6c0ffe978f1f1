package server

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"

	"github.com/chatcluster/chatcluster/codec"
	"github.com/chatcluster/chatcluster/conf"
	"github.com/chatcluster/chatcluster/pubsub"
	"github.com/chatcluster/chatcluster/service"
	"github.com/chatcluster/chatcluster/store"
)

// App is a whole chatserver process: store, bus, services and listener,
// wired from a conf.Config. cmd/chatserver and the end-to-end tests use it.
type App struct {
	Store  *store.Store
	Bus    pubsub.Bus
	Node   *service.Node
	Server *Server
}

// DefaultNodeID is the node id used when none is configured: the host name
// and the listen port, e.g. "chat1:6000".
func DefaultNodeID(listen string) string {
	host, _ := os.Hostname()
	if host == "" {
		host = "node"
	}
	_, port, err := net.SplitHostPort(listen)
	if err != nil || port == "0" {
		var b [4]byte
		_, _ = rand.Read(b[:])
		port = hex.EncodeToString(b[:])
	}
	return host + ":" + port
}

// Open builds and starts an App. Close stops it.
func Open(ctx context.Context, cfg conf.Config, log *slog.Logger) (*App, error) {
	if log == nil {
		log = slog.Default()
	}
	st, err := store.Open(ctx, store.Config{DSN: cfg.DB, WriterPriority: cfg.WriterPriority, Logger: log})
	if err != nil {
		return nil, err
	}
	nodeID := cfg.NodeID
	if nodeID == "" {
		nodeID = DefaultNodeID(cfg.Listen)
	}
	var bus pubsub.Bus = pubsub.NewMemory()
	if cfg.Redis != "" {
		// The bus adds the node id to its own lines.
		bus, err = pubsub.NewRedis(ctx, pubsub.RedisConfig{
			Addr: cfg.Redis, NodeID: nodeID, Prefix: cfg.RedisPrefix, Lease: cfg.PresenceLease, Logger: log,
		})
		log = log.With("node", nodeID)
		pubsub.LogRedisTo(log)
		if err != nil {
			st.Close()
			return nil, err
		}
	}
	scfg := Config{
		Listen: cfg.Listen, MaxFrame: cfg.MaxFrame, MaxConns: cfg.MaxConns, IdleTimeout: cfg.IdleTimeout,
		RatePerSec: cfg.Rate, RateBurst: cfg.RateBurst, MaxPending: cfg.MaxPending,
		MaxPendingBytes: cfg.MaxPendingBytes, MaxOutbound: cfg.MaxOutbound,
		Workers: cfg.Workers, EventLoops: cfg.EventLoops, MemReleaseIdle: cfg.MemReleaseIdle, Logger: log,
	}
	scfg.setDefaults()
	node, err := service.New(ctx, service.Config{
		Store: st, Bus: bus, Logger: log,
		BcryptCost: cfg.BcryptCost, TokenTTL: cfg.TokenTTL, OfflineCap: cfg.OfflineCap,
		MaxMessageLen: cfg.MaxMessage, NodeName: nodeID, MaxFrame: cmp.Or(cfg.MaxFrame, codec.DefaultMaxFrame),
		PumpWindow: pumpWindow(cfg.MaxOutbound), MaxLoginAck: cfg.MaxOutbound / 2,
		LoginGroupUsers: cfg.LoginGroupUsers, LoginUsers: cfg.LoginUsers,
		MaxFriends: cfg.MaxFriends, MaxGroups: cfg.MaxGroups, MaxGroupMembers: cfg.MaxGroupMembers,
		// What a connection's sends hold waiting for their commit, as
		// what its requests hold waiting to be handled.
		MaxSending:      scfg.MaxPendingBytes,
		PasswordWorkers: cfg.PasswordWorkers,
	})
	if err != nil {
		st.Close()
		return nil, err
	}
	srv := New(scfg, node)
	if err := srv.Start(); err != nil {
		node.Close()
		bus.Close()
		st.Close()
		return nil, err
	}
	return &App{Store: st, Bus: bus, Node: node, Server: srv}, nil
}

// Close stops the listener gracefully (in-flight requests finish, acks are
// flushed), then the bus and the store.
func (a *App) Close(ctx context.Context) error {
	err := a.Server.Stop(ctx)
	if e := a.Bus.Close(); e != nil {
		err = errors.Join(err, fmt.Errorf("bus: %w", e))
	}
	if e := a.Store.Close(); e != nil {
		err = errors.Join(err, fmt.Errorf("store: %w", e))
	}
	return err
}

// pumpWindow is what a backlog's pump lets wait unsent to a client: a
// quarter of max-outbound (past which the connection is closed as a slow
// consumer), at most 1 MiB; 0 (the service's default, 1 MiB) when
// max-outbound is not set.
func pumpWindow(maxOutbound int) int {
	if maxOutbound <= 0 {
		return 0
	}
	return min(maxOutbound/4, 1<<20)
}
