//go:build cgo

package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/jmoiron/sqlx"
	"github.com/mattn/go-sqlite3"
)

// SQLiteImplementation names the SQLite library this build uses: SQLite's
// own C code through cgo when a C compiler is at hand (the default), the
// pure-Go translation otherwise (CGO_ENABLED=0; sqlite_purego.go). Both take
// the same DSNs and files. The C library runs the group commit's
// statements ~1.2-1.4× faster (docs/BENCHMARKS-history.md, "Changes in
// session 6").
const SQLiteImplementation = "github.com/mattn/go-sqlite3 (SQLite's C library, cgo)"

// openSQLite opens dsn, "file:PATH?QUERY" as parseDSN builds (and checks)
// it. Each "_pragma=NAME(VALUE)" option becomes a "PRAGMA NAME(VALUE)" run
// on every new connection, in modernc.org/sqlite's order (busy_timeout
// first, the others sorted), so that a DSN means the same to both builds;
// the other options go to the driver.
func openSQLite(dsn string) (*sqlx.DB, error) {
	path, query, _ := strings.Cut(dsn, "?")
	opts, err := url.ParseQuery(query)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadDSN, err)
	}
	pragmas := opts["_pragma"]
	key := func(p string) string { return strings.ToLower(strings.TrimSpace(p)) }
	slices.SortStableFunc(pragmas, func(a, b string) int {
		ba, bb := strings.HasPrefix(key(a), "busy_timeout"), strings.HasPrefix(key(b), "busy_timeout")
		switch {
		case ba && !bb:
			return -1
		case bb && !ba:
			return 1
		}
		return strings.Compare(key(a), key(b))
	})
	c := &sqliteConnector{drv: &sqlite3.SQLiteDriver{}}
	for _, p := range pragmas {
		c.pragmas = append(c.pragmas, "PRAGMA "+p)
	}
	opts.Del("_pragma")
	c.dsn = path
	if len(opts) > 0 {
		c.dsn += "?" + opts.Encode()
	}
	return sqlx.NewDb(sql.OpenDB(c), "sqlite3"), nil
}

// sqliteConnector opens connections with the store's pragmas applied.
type sqliteConnector struct {
	drv     *sqlite3.SQLiteDriver
	dsn     string
	pragmas []string
}

// Connect implements driver.Connector.
func (c *sqliteConnector) Connect(context.Context) (driver.Conn, error) {
	conn, err := c.drv.Open(c.dsn)
	if err != nil {
		return nil, err
	}
	sc := conn.(*sqlite3.SQLiteConn)
	for _, p := range c.pragmas {
		if _, err := sc.Exec(p, nil); err != nil {
			sc.Close()
			return nil, fmt.Errorf("%s: %w", p, err)
		}
	}
	return sc, nil
}

// Driver implements driver.Connector.
func (c *sqliteConnector) Driver() driver.Driver { return c.drv }
