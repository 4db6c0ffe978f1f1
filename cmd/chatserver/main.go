// Command chatserver runs one chatcluster node. With no database or Redis
// configured it runs alone on an embedded SQLite file (chat.db).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/chatcluster/chatcluster/conf"
	"github.com/chatcluster/chatcluster/server"
	"github.com/chatcluster/chatcluster/store"
)

func main() {
	cfg, err := conf.Load(os.Args[1:], os.Getenv, os.Stderr)
	if errors.Is(err, conf.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "chatserver:", err)
		os.Exit(2)
	}
	log := cfg.Logger(os.Stderr)
	raiseFileLimit(log)
	if cfg.PasswordWorkers <= 0 { // half the CPUs, before setMaxProcs adds Ps
		cfg.PasswordWorkers = max(1, runtime.GOMAXPROCS(0)/2)
	}
	cfg.EventLoops = setMaxProcs(os.Getenv, cfg.EventLoops, cfg.DB, log)
	setGC(os.Getenv, log)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if cfg.Migrate {
		st, err := store.Open(ctx, store.Config{DSN: cfg.DB, Logger: log})
		if err != nil {
			log.Error("migrate failed", "err", err)
			os.Exit(1)
		}
		st.Close()
		log.Info("schema is up to date")
		return
	}
	if cfg.Pprof != "" {
		servePprof(cfg.Pprof, log)
	}
	app, err := server.Open(ctx, cfg, log)
	if err != nil {
		log.Error("start failed", "err", err)
		os.Exit(1)
	}
	<-ctx.Done()
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := app.Close(sctx); err != nil {
		log.Error("shutdown", "err", err)
		os.Exit(1)
	}
}
