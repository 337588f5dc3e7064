package control_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/wiremesh/wiremesh/control"
	"github.com/wiremesh/wiremesh/control/api"
)

// Start runs a whole service: API with a self-signed certificate, STUN,
// and SQLite state kept in the data directory.
func ExampleStart() {
	dir, err := os.MkdirTemp("", "wiremesh-example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()
	svc, err := control.Start(ctx, control.Options{DataDir: dir, Listen: "127.0.0.1:0", STUNListen: "127.0.0.1:0"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer svc.Close()
	tok, err := svc.CreateJoinToken(ctx, api.DefaultZone, false, time.Hour)
	if err != nil {
		fmt.Println(err)
		return
	}
	_, fingerprint, _ := api.ParseJoinToken(tok)
	fmt.Println(strings.HasPrefix(svc.URL(), "https://127.0.0.1:"))
	fmt.Println("token pins the certificate:", string(fingerprint) == string(svc.Fingerprint()))
	// Output:
	// true
	// token pins the certificate: true
}
