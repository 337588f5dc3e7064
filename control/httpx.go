package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/store"
)

// apiErr builds an *api.Error with a formatted message.
func apiErr(code, format string, args ...any) *api.Error {
	return &api.Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, apiErr(api.CodeInternal, "encoding response failed"))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// retryAfterSeconds is the Retry-After of a 503: a database restart or a
// replica failing over takes seconds.
const retryAfterSeconds = "2"

func writeError(w http.ResponseWriter, e *api.Error) {
	noteErrorCode(w, e.Code)
	b, _ := json.Marshal(e)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	switch e.Code {
	case api.CodeUnauthorized:
		w.Header().Set("WWW-Authenticate", `Bearer realm="wiremesh"`)
	case api.CodeUnavailable:
		w.Header().Set("Retry-After", retryAfterSeconds)
	}
	w.WriteHeader(api.StatusForCode(e.Code))
	w.Write(append(b, '\n'))
}

// decodeBody reads a JSON body of at most api.MaxBodyBytes into v, refusing
// unknown fields and trailing data.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) *api.Error {
	body, aerr := readBody(w, r)
	if aerr != nil {
		return aerr
	}
	return decodeJSON(body, v)
}

// readBody reads a request body of at most api.MaxBodyBytes.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, *api.Error) {
	return readBodyMax(w, r, api.MaxBodyBytes)
}

// readBodyMax reads a request body of at most limit bytes (413 too_large
// beyond).
func readBodyMax(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, *api.Error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, apiErr(api.CodeTooLarge, "request body over %d bytes", limit)
		}
		return nil, apiErr(api.CodeBadRequest, "reading request body: %v", err)
	}
	return body, nil
}

// decodeLoose decodes JSON allowing unknown fields (to probe one field).
func decodeLoose(body []byte, v any) *api.Error {
	if err := json.Unmarshal(body, v); err != nil {
		return apiErr(api.CodeBadRequest, "invalid JSON body: %v", err)
	}
	return nil
}

func decodeJSON(body []byte, v any) *api.Error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return apiErr(api.CodeBadRequest, "invalid JSON body: %v", err)
	}
	if dec.More() {
		return apiErr(api.CodeBadRequest, "invalid JSON body: trailing data after the object")
	}
	return nil
}

// storeErr maps a store error to an API error. what names the operation for
// the message of unexpected errors, which never leak their detail.
func (s *server) storeErr(ctx context.Context, what string, err error) *api.Error {
	if aerr := prefixErr(err); aerr != nil {
		return aerr
	}
	switch {
	case errors.Is(err, store.ErrRevoked):
		return apiErr(api.CodeRevoked, "%s: this device's key was revoked: it can never register again; create a new identity", what)
	case errors.Is(err, store.ErrHostnameTaken):
		return apiErr(api.CodeHostnameTaken, "%s: the hostname and its suffixed forms are taken in the zone: choose another", what)
	case errors.Is(err, store.ErrReplayed):
		return apiErr(api.CodeUnauthorized, "replayed registration: this signed request was used already")
	case errors.Is(err, store.ErrTokenInvalid):
		return apiErr(api.CodeUnauthorized, "join token unknown, expired, already used, or for another zone")
	case errors.Is(err, store.ErrPoolExhausted):
		return apiErr(api.CodePoolExhausted, "%s: the zone's tunnel address pool is exhausted", what)
	case errors.Is(err, store.ErrAddrInUse):
		return apiErr(api.CodeAddrInUse, "%s: the requested tunnel address is in use", what)
	case errors.Is(err, store.ErrAddrOutside):
		return apiErr(api.CodeBadRequest, "%s: the requested tunnel address is outside the zone's pool", what)
	case errors.Is(err, store.ErrNotFound):
		return apiErr(api.CodeNotFound, "%s: not found", what)
	case errors.Is(err, store.ErrExists):
		return apiErr(api.CodeConflict, "%s: already exists", what)
	case errors.Is(err, store.ErrUnavailable):
		s.log.WarnContext(ctx, "database unavailable", "op", what, "err", err)
		return apiErr(api.CodeUnavailable, "%s: the service's database is unavailable; try again shortly", what)
	case errors.Is(err, store.ErrClosed), errors.Is(err, context.Canceled):
		return apiErr(api.CodeUnavailable, "%s: the service is shutting down", what)
	}
	s.log.ErrorContext(ctx, "store operation failed", "op", what, "err", err)
	return apiErr(api.CodeInternal, "%s failed; nothing was changed", what)
}

// writeList answers a list request: the store's items in their wire form
// (an empty JSON array, never null), or the store's error.
func writeList[T, A any](s *server, w http.ResponseWriter, r *http.Request, what string, items []T, err error, conv func(T) A) {
	if err != nil {
		writeError(w, s.storeErr(r.Context(), what, err))
		return
	}
	out := make([]A, 0, len(items))
	for _, it := range items {
		out = append(out, conv(it))
	}
	writeJSON(w, http.StatusOK, out)
}
