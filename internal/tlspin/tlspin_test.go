package tlspin

import (
	"bytes"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func get(t *testing.T, url string, fp []byte) error {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: ClientConfig(fp, nil)}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get(url)
	if err == nil {
		resp.Body.Close()
	}
	return err
}

func TestPin(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer srv.Close()
	fp := Fingerprint(srv.Certificate().Raw)
	require.Len(t, fp, Size)

	// The pinned self-signed certificate is trusted with no CA and any name.
	require.NoError(t, get(t, srv.URL, fp))
	// Without a pin the chain is verified (against the system roots here).
	require.Error(t, get(t, srv.URL, nil))

	wrong := bytes.Repeat([]byte{0xab}, Size)
	err := get(t, srv.URL, wrong)
	var me *MismatchError
	require.ErrorAs(t, err, &me)
	require.Equal(t, fp, me.Got)
	require.Equal(t, wrong, me.Want)
	require.ErrorContains(t, err, "service certificate fingerprint "+hex.EncodeToString(fp)+" does not match the pinned "+hex.EncodeToString(wrong))
}

func TestCheckAndParse(t *testing.T) {
	require.NoError(t, Check(nil))
	require.NoError(t, Check(make([]byte, Size)))
	require.ErrorContains(t, Check([]byte{1, 2}), "certificate fingerprint: 2 bytes, want 32")

	want := bytes.Repeat([]byte{0x0f}, Size)
	h := hex.EncodeToString(want)
	for _, in := range []string{h, strings.ToUpper(h), " " + h + "\n", colons(h)} {
		got, err := Parse(in)
		require.NoError(t, err, "%q", in)
		require.Equal(t, want, got, "%q", in)
	}
	for _, in := range []string{"", "zz", h[:62], h + "00"} {
		_, err := Parse(in)
		require.ErrorContains(t, err, "want 64 hex digits", "%q", in)
		require.ErrorContains(t, err, "\""+in+"\"")
	}
}

func colons(h string) string {
	var parts []string
	for i := 0; i < len(h); i += 2 {
		parts = append(parts, h[i:i+2])
	}
	return strings.Join(parts, ":")
}

func TestFromCertFile(t *testing.T) {
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	defer srv.Close()
	dir := t.TempDir()
	crt := filepath.Join(dir, "tls.crt")
	require.NoError(t, os.WriteFile(crt, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600))
	fp, err := FromCertFile(crt)
	require.NoError(t, err)
	require.Equal(t, Fingerprint(srv.Certificate().Raw), fp)

	_, err = FromCertFile(filepath.Join(dir, "missing.crt"))
	require.True(t, errors.Is(err, fs.ErrNotExist), "%v", err)
	key := filepath.Join(dir, "tls.key")
	require.NoError(t, os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}}), 0o600))
	_, err = FromCertFile(key)
	require.ErrorContains(t, err, "no PEM certificate")
}
