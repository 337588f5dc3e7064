package postgres

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/wiremesh/wiremesh/control/store"
)

// SQLSTATE codes this package acts on.
const (
	codeUniqueViolation    = "23505"
	codeExclusionViolation = "23P01"
	codeSerialization      = "40001"
	codeDeadlock           = "40P01"
	codeInvalidPassword    = "28P01"
	codeInvalidAuth        = "28000"
	codeUndefinedFile      = "58P01" // e.g. an extension that is not installed
)

// retryable reports an error after which the whole transaction may simply
// run again: a concurrent transaction won a race (unique or exclusion
// violation, serialization failure, deadlock). The retry re-reads the
// state and fails with the store's own error if the race left a real
// conflict.
func retryable(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case codeUniqueViolation, codeExclusionViolation, codeSerialization, codeDeadlock:
			return true
		}
	}
	return false
}

// unavailable reports an error caused by the database being unreachable
// or going away, rather than by the request.
func unavailable(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case strings.HasPrefix(pe.Code, "08"): // connection exception
			return true
		case pe.Code == "57P01", pe.Code == "57P02", pe.Code == "57P03": // shutdown, crash, starting up
			return true
		case pe.Code == "53300": // too many connections
			return true
		}
		return false
	}
	var ce *pgconn.ConnectError
	var ne net.Error
	return errors.As(err, &ce) || errors.As(err, &ne) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, pgconn.ErrConnClosed) ||
		pgconn.SafeToRetry(err)
}

// connectErr explains the usual reasons a first connection fails.
func connectErr(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == codeInvalidPassword || pe.Code == codeInvalidAuth) {
		return fmt.Errorf("authentication refused (check the user and password in the DSN): %w", err)
	}
	if unavailable(err) {
		return fmt.Errorf("cannot reach the PostgreSQL server (is it running, are the DSN's host and port right?): %w: %w", store.ErrUnavailable, err)
	}
	return err
}
