//go:build !cgo

package store

import (
	"github.com/jmoiron/sqlx"
	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// SQLiteImplementation names the SQLite library this build uses: the
// pure-Go translation of SQLite, because this build has no cgo
// (CGO_ENABLED=0, or no C compiler found). sqlite_cgo.go has the default.
const SQLiteImplementation = "modernc.org/sqlite (SQLite translated to Go, no cgo)"

// openSQLite opens dsn, "file:PATH?QUERY" as parseDSN builds it; the
// driver applies the "_pragma=NAME(VALUE)" options to every connection.
func openSQLite(dsn string) (*sqlx.DB, error) {
	return sqlx.Open("sqlite", dsn)
}
