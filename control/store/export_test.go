package store

import (
	"context"
	"sync"
)

// HoldWriter takes the single write connection until release is called,
// so tests can make writers wait.
func HoldWriter(s *SQLite) (release func(), err error) {
	c, err := s.w.Conn(context.Background())
	if err != nil {
		return nil, err
	}
	return sync.OnceFunc(func() { c.Close() }), nil
}

// StatsRows counts the rows of device_stats, joining nothing: reports
// left behind by a deleted device show here and nowhere in the API.
func StatsRows(s *SQLite) (n int, err error) {
	err = s.r.QueryRowContext(context.Background(), `SELECT count(*) FROM device_stats`).Scan(&n)
	return n, err
}
