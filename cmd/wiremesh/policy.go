package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/wiremesh/wiremesh/control/api"
)

func runPolicySet(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var zone string
	c, pos, err := adminCmd("policy set", "policy set [flags] FILE (- for stdin)", stderr, args, 1, func(fs *flag.FlagSet) {
		fs.StringVar(&zone, "zone", api.DefaultZone, "zone of the policy")
	})
	if err != nil {
		return err
	}
	defer c.Close()
	file := pos[0]
	var doc []byte
	if file == "-" {
		doc, err = io.ReadAll(io.LimitReader(os.Stdin, api.MaxBodyBytes+1))
	} else {
		doc, err = os.ReadFile(file)
	}
	if err != nil {
		return fmt.Errorf("policy set: %w", err)
	}
	p, err := c.SetPolicy(ctx, zone, doc)
	var ae *api.Error
	if errors.As(err, &ae) && ae.Line > 0 {
		// Compiler style, so editors jump to the line; the old policy stays.
		return fmt.Errorf("policy set --zone %q: %s:%d: %s: %s (the policy in force is unchanged)", zone, file, ae.Line, ae.Code, ae.Message)
	}
	if err != nil {
		return fmt.Errorf("policy set --zone %q: %w", zone, err)
	}
	fmt.Fprintf(stdout, "policy of zone %q set (revision %d); members get it through their watch streams\n", zone, p.Revision)
	return nil
}

func runPolicyGet(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var zone string
	c, _, err := adminCmd("policy get", "policy get [flags]", stderr, args, 0, func(fs *flag.FlagSet) {
		fs.StringVar(&zone, "zone", api.DefaultZone, "zone of the policy")
	})
	if err != nil {
		return err
	}
	defer c.Close()
	p, err := c.Policy(ctx, zone)
	if err != nil {
		return fmt.Errorf("policy get --zone %q: %w", zone, err)
	}
	if p.Document == "" {
		fmt.Fprintf(stderr, "zone %q has no policy: everything is allowed\n", zone)
		return nil
	}
	// The document as set, so that `policy get > f; policy set f` round-trips.
	_, err = io.WriteString(stdout, p.Document)
	if err == nil && !strings.HasSuffix(p.Document, "\n") {
		_, err = io.WriteString(stdout, "\n")
	}
	return err
}

func runPolicyDelete(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var zone string
	c, _, err := adminCmd("policy delete", "policy delete [flags]", stderr, args, 0, func(fs *flag.FlagSet) {
		fs.StringVar(&zone, "zone", api.DefaultZone, "zone of the policy")
	})
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.DeletePolicy(ctx, zone); err != nil {
		return fmt.Errorf("policy delete --zone %q: %w", zone, err)
	}
	fmt.Fprintf(stdout, "policy of zone %q removed: everything is allowed\n", zone)
	return nil
}

func runPolicyCheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var zone, proto string
	c, pos, err := adminCmd("policy check", "policy check [flags] FROM TO:PORT", stderr, args, 2, func(fs *flag.FlagSet) {
		fs.StringVar(&zone, "zone", api.DefaultZone, "zone of the policy")
		fs.StringVar(&proto, "proto", api.ProtoTCP, "protocol: tcp, udp, icmp or any")
	})
	if err != nil {
		return err
	}
	defer c.Close()
	res, err := c.CheckPolicy(ctx, zone, api.PolicyCheckRequest{From: pos[0], To: pos[1], Proto: proto})
	if err != nil {
		return fmt.Errorf("policy check --zone %q: %w", zone, err)
	}
	if res.Allowed {
		fmt.Fprintf(stdout, "allowed: %s\n", res.Reason)
		return nil
	}
	fmt.Fprintf(stdout, "denied: %s\n", res.Reason)
	if len(res.Missing) > 0 {
		var b bytes.Buffer
		if json.Indent(&b, res.Missing, "", "  ") == nil {
			fmt.Fprintf(stdout, "missing rule, for example:\n%s\n", b.String())
		}
	}
	return errDenied
}

// errDenied makes `policy check` exit 1 on a denied flow, for scripts.
var errDenied = errors.New("policy check: the flow is denied")

// tagList prints tags for a table ("-": none).
func tagList(tags []string) string {
	if len(tags) == 0 {
		return "-"
	}
	return strings.Join(tags, ",")
}
