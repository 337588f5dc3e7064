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
