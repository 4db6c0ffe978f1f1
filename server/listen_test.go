package server_test

import (
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chatcluster/chatcluster/conf"
	"github.com/chatcluster/chatcluster/server"
)

// A port that is already taken fails the start with the system's own words,
// which scripts (build.sh's port retry) look for.
func TestListenAddressInUse(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cfg := conf.Default()
	cfg.Listen = taken.Addr().String()
	cfg.DB = "sqlite:" + filepath.Join(t.TempDir(), "chat.db")
	cfg.BcryptCost = 4
	app, err := server.Open(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err == nil {
		app.Close(context.Background())
		t.Fatal("started on a port that is in use")
	}
	if !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("error %q does not say the address is in use", err)
	}
}
