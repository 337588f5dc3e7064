package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/wiremesh/wiremesh/control/api"
)

// Parse reads a policy document. Any error is an *Error naming the line;
// nothing of a refused document is kept.
func Parse(doc []byte) (*Policy, error) {
	if len(doc) > MaxDocumentBytes {
		return nil, &Error{Code: api.CodeInvalidPolicy, Msg: fmt.Sprintf("document of %d bytes, over the limit of %d", len(doc), MaxDocumentBytes)}
	}
	r := newReader(doc)
	p := &Policy{Tags: map[string][]string{}}
	var tagRefs []Selector
	err := r.object("the policy", func(key string, line int) error {
		switch key {
		case "tags":
			return r.tags(p)
		case "rules":
			var err error
			p.Rules, tagRefs, err = r.rules()
			return err
		}
		return &Error{Code: api.CodeInvalidPolicy, Line: line, Msg: fmt.Sprintf("unknown field %q (want tags, rules)", key)}
	})
	if err != nil {
		return nil, err
	}
	if err := r.end(); err != nil {
		return nil, err
	}
	for _, s := range tagRefs {
		if _, ok := p.Tags[s.Name]; !ok {
			return nil, &Error{Code: api.CodeUnknownTag, Line: s.Line,
				Msg: fmt.Sprintf("tag %q is not declared in \"tags\" (declare it, with an empty list if only join tokens give it)", s.Name)}
		}
	}
	return p, nil
}

// reader walks a JSON document token by token, knowing the line of each.
type reader struct {
	dec   *json.Decoder
	lines []int // offsets of '\n' in the document
}

func newReader(doc []byte) *reader {
	r := &reader{dec: json.NewDecoder(bytes.NewReader(doc))}
	r.dec.UseNumber()
	for i, c := range doc {
		if c == '\n' {
			r.lines = append(r.lines, i)
		}
	}
	return r
}

// lineAt returns the 1-based line of byte offset off.
func (r *reader) lineAt(off int64) int {
	return sort.SearchInts(r.lines, int(off)) + 1
}

// token reads the next token and returns it with the line it ends on.
func (r *reader) token() (json.Token, int, error) {
	t, err := r.dec.Token()
	if err != nil {
		return nil, 0, r.syntaxErr(err)
	}
	return t, r.lineAt(max(r.dec.InputOffset()-1, 0)), nil
}

// syntaxErr turns an error of the decoder into an *Error with its line.
func (r *reader) syntaxErr(err error) error {
	var se *json.SyntaxError
	switch {
	case errors.As(err, &se):
		return &Error{Code: api.CodeInvalidPolicy, Line: r.lineAt(max(se.Offset-1, 0)), Msg: "JSON syntax: " + se.Error()}
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return &Error{Code: api.CodeInvalidPolicy, Line: len(r.lines) + 1, Msg: "unexpected end of the document"}
	}
	return &Error{Code: api.CodeInvalidPolicy, Line: r.lineAt(r.dec.InputOffset()), Msg: err.Error()}
}

// end checks that nothing follows the document.
func (r *reader) end() error {
	t, err := r.dec.Token()
	switch {
	case errors.Is(err, io.EOF):
		return nil
	case err != nil:
		return r.syntaxErr(err)
	}
	return &Error{Code: api.CodeInvalidPolicy, Line: r.lineAt(max(r.dec.InputOffset()-1, 0)),
		Msg: "trailing data after the document: " + describe(t)}
}

// describe names a token for an error message.
func describe(t json.Token) string {
	switch v := t.(type) {
	case json.Delim:
		switch v {
		case '{', '}':
			return "an object"
		default:
			return "an array"
		}
	case string:
		return fmt.Sprintf("the string %q", v)
	case json.Number:
		return "the number " + v.String()
	case bool:
		return fmt.Sprintf("%v", v)
	case nil:
		return "null"
	}
	return fmt.Sprintf("%v", t)
}

// object reads an object, calling field for each key with the reader
// positioned before its value. Duplicate keys are refused.
func (r *reader) object(what string, field func(key string, line int) error) error {
	_, err := r.open(what)
	if err != nil {
		return err
	}
	return r.fields(what, field)
}

// open reads the '{' of an object and returns its line.
func (r *reader) open(what string) (int, error) {
	t, line, err := r.token()
	if err != nil {
		return line, err
	}
	if d, ok := t.(json.Delim); !ok || d != '{' {
		return line, &Error{Code: api.CodeInvalidPolicy, Line: line, Msg: fmt.Sprintf("%s: want an object, got %s", what, describe(t))}
	}
	return line, nil
}

// fields reads the fields of an object whose '{' was read.
func (r *reader) fields(what string, field func(key string, line int) error) error {
	seen := map[string]bool{}
	for {
		t, line, err := r.token()
		if err != nil {
			return err
		}
		if d, ok := t.(json.Delim); ok && d == '}' {
			return nil
		}
		key := t.(string) // the decoder only returns strings as keys
		if seen[key] {
			return &Error{Code: api.CodeInvalidPolicy, Line: line, Msg: fmt.Sprintf("%s: %q given twice", what, key)}
		}
		seen[key] = true
		if err := field(key, line); err != nil {
			return err
		}
	}
}

// strings reads an array of strings, calling item for each.
func (r *reader) strings(what string, item func(s string, line int) error) error {
	t, line, err := r.token()
	if err != nil {
		return err
	}
	if d, ok := t.(json.Delim); !ok || d != '[' {
		return &Error{Code: api.CodeInvalidPolicy, Line: line, Msg: fmt.Sprintf("%s: want an array of strings, got %s", what, describe(t))}
	}
	for n := 0; ; n++ {
		t, line, err := r.token()
		if err != nil {
			return err
		}
		if d, ok := t.(json.Delim); ok && d == ']' {
			return nil
		}
		s, ok := t.(string)
		if !ok {
			return &Error{Code: api.CodeInvalidPolicy, Line: line, Msg: fmt.Sprintf("%s: want a string, got %s", what, describe(t))}
		}
		if n == MaxListLen {
			return &Error{Code: api.CodeInvalidPolicy, Line: line, Msg: fmt.Sprintf("%s: more than %d entries", what, MaxListLen)}
		}
		if err := item(s, line); err != nil {
			return err
		}
	}
}

// str reads one string value.
func (r *reader) str(what string) (string, int, error) {
	t, line, err := r.token()
	if err != nil {
		return "", line, err
	}
	s, ok := t.(string)
	if !ok {
		return "", line, &Error{Code: api.CodeInvalidPolicy, Line: line, Msg: fmt.Sprintf("%s: want a string, got %s", what, describe(t))}
	}
	return s, line, nil
}

func (r *reader) tags(p *Policy) error {
	return r.object("tags", func(name string, line int) error {
		if err := checkName("tag name", name); err != nil {
			return &Error{Code: api.CodeInvalidSelector, Line: line, Msg: err.Error()}
		}
		if len(p.Tags) == MaxTags {
			return &Error{Code: api.CodeInvalidPolicy, Line: line, Msg: fmt.Sprintf("more than %d tags", MaxTags)}
		}
		hosts := []string{}
		err := r.strings(fmt.Sprintf("tag %q", name), func(h string, line int) error {
			sel, err := parseSelector(h, line)
			if err != nil {
				return err
			}
			if sel.Kind != KindHost {
				return &Error{Code: api.CodeInvalidSelector, Line: line, Msg: fmt.Sprintf("tag %q: %q is not a hostname (tags list hostnames)", name, h)}
			}
			hosts = append(hosts, sel.Name)
			return nil
		})
		p.Tags[name] = hosts
		return err
	})
}

// rules reads the rules and returns them with every tag selector they use.
func (r *reader) rules() ([]Rule, []Selector, error) {
	t, line, err := r.token()
	if err != nil {
		return nil, nil, err
	}
	if d, ok := t.(json.Delim); !ok || d != '[' {
		return nil, nil, &Error{Code: api.CodeInvalidPolicy, Line: line, Msg: "rules: want an array of rules, got " + describe(t)}
	}
	var (
		rules []Rule
		refs  []Selector
	)
	for r.dec.More() {
		if len(rules) == MaxRules {
			return nil, nil, &Error{Code: api.CodeInvalidPolicy, Line: r.lineAt(r.dec.InputOffset()), Msg: fmt.Sprintf("more than %d rules", MaxRules)}
		}
		rule, err := r.rule(len(rules) + 1)
		if err != nil {
			return nil, nil, err
		}
		for _, s := range rule.From {
			if s.Kind == KindTag {
				refs = append(refs, s)
			}
		}
		for _, d := range rule.To {
			if d.Kind == KindTag {
				refs = append(refs, d.Selector)
			}
		}
		rules = append(rules, rule)
	}
	if _, _, err := r.token(); err != nil { // the closing ']'
		return nil, nil, err
	}
	return rules, refs, nil
}

// rule reads rule number n.
func (r *reader) rule(n int) (Rule, error) {
	var rule Rule
	what := fmt.Sprintf("rule %d", n)
	start, err := r.open(what)
	if err != nil {
		return Rule{}, err
	}
	protoLine := 0
	err = r.fields(what, func(key string, line int) error {
		switch key {
		case "from":
			return r.strings(what+" from", func(s string, line int) error {
				sel, err := parseSelector(s, line)
				rule.From = append(rule.From, sel)
				return err
			})
		case "to":
			return r.strings(what+" to", func(s string, line int) error {
				d, err := parseDest(s, line)
				rule.To = append(rule.To, d)
				return err
			})
		case "proto":
			s, line, err := r.str(what + " proto")
			if err != nil {
				return err
			}
			p, ok := ParseProto(s)
			if !ok {
				return &Error{Code: api.CodeInvalidProto, Line: line, Msg: fmt.Sprintf("%s: proto %q: want tcp, udp, icmp or any", what, s)}
			}
			rule.Proto, protoLine = p, line
			return nil
		case "comment":
			s, _, err := r.str(what + " comment")
			rule.Comment = s
			return err
		}
		return &Error{Code: api.CodeInvalidPolicy, Line: line, Msg: fmt.Sprintf("%s: unknown field %q (want from, to, proto, comment)", what, key)}
	})
	if err != nil {
		return Rule{}, err
	}
	rule.Line = start
	switch {
	case len(rule.From) == 0:
		return Rule{}, &Error{Code: api.CodeInvalidPolicy, Line: start, Msg: what + ": no \"from\" selectors"}
	case len(rule.To) == 0:
		return Rule{}, &Error{Code: api.CodeInvalidPolicy, Line: start, Msg: what + ": no \"to\" selectors"}
	}
	if rule.Proto == ProtoICMP {
		for _, d := range rule.To {
			if len(d.Ports) > 0 {
				return Rule{}, &Error{Code: api.CodeInvalidProto, Line: max(protoLine, d.Line),
					Msg: fmt.Sprintf("%s: %q: icmp has no ports (use :*)", what, d.String())}
			}
		}
	}
	return rule, nil
}

// checkName checks a tag name or hostname: 1 to MaxNameLen bytes of
// printable UTF-8 without spaces and without the characters that make
// selectors (':', '/', '*', ',').
func checkName(what, s string) error {
	if s == "" || len(s) > MaxNameLen || !utf8.ValidString(s) {
		return fmt.Errorf("%s %q: want 1 to %d bytes of UTF-8", what, s, MaxNameLen)
	}
	for _, c := range s {
		if c <= ' ' || c == 0x7f || strings.ContainsRune(":/*,\"\\", c) || (c >= 0x80 && c < 0xa0) {
			return fmt.Errorf("%s %q: character %q not allowed", what, s, c)
		}
	}
	return nil
}

// looksLikeAddr reports whether s can only be meant as an address or
// prefix: it holds '/' or ':' or only digits and dots.
func looksLikeAddr(s string) bool {
	if strings.ContainsAny(s, "/:") {
		return true
	}
	return strings.Trim(s, "0123456789.") == ""
}

// parseSelector parses a "from" selector (or a "to" one without ports).
func parseSelector(s string, line int) (Selector, error) {
	sel := Selector{Line: line}
	switch {
	case s == "*":
		sel.Kind = KindAny
	case strings.HasPrefix(s, "tag:"):
		sel.Kind, sel.Name = KindTag, s[len("tag:"):]
		if err := checkName("tag name", sel.Name); err != nil {
			return sel, &Error{Code: api.CodeInvalidSelector, Line: line, Msg: err.Error()}
		}
	case looksLikeAddr(s):
		p, err := parseCIDR(s)
		if err != nil {
			return sel, &Error{Code: api.CodeInvalidSelector, Line: line, Msg: err.Error()}
		}
		sel.Kind, sel.Prefix = KindCIDR, p
	default:
		if err := checkName("hostname", s); err != nil {
			return sel, &Error{Code: api.CodeInvalidSelector, Line: line, Msg: err.Error()}
		}
		sel.Kind, sel.Name = KindHost, strings.ToLower(s)
	}
	return sel, nil
}

// parseCIDR parses a canonical prefix or a single address (as /32 or /128).
func parseCIDR(s string) (netip.Prefix, error) {
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return p, fmt.Errorf("%q is not a CIDR prefix", s)
		}
		if p != p.Masked() {
			return p, fmt.Errorf("%q has host bits set (did you mean %s?)", s, p.Masked())
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return p, fmt.Errorf("%q is not an IP address or CIDR prefix", s)
		}
		if a.Zone() != "" {
			return p, fmt.Errorf("%q: addresses with a zone are not allowed", s)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if p.Addr().Is4In6() {
		return p, fmt.Errorf("%q: IPv4-mapped IPv6 is not allowed; write the IPv4 form", s)
	}
	return p, nil
}

// parseDest parses a "to" selector: SELECTOR:PORTS ("[v6]:PORTS" works too).
func parseDest(s string, line int) (Dest, error) {
	needPorts := &Error{Code: api.CodeInvalidPort, Line: line,
		Msg: fmt.Sprintf("%q: a destination needs ports (\":80\", \":8000-8099\", \":80,443\" or \":*\")", s)}
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return Dest{Selector: Selector{Line: line}}, needPorts
	}
	head := s[:i]
	if len(head) > 2 && head[0] == '[' && head[len(head)-1] == ']' {
		head = head[1 : len(head)-1]
	}
	sel, selErr := parseSelector(head, line)
	ports, portErr := parsePorts(s[i+1:])
	if selErr == nil && portErr == nil {
		return Dest{Selector: sel, Ports: ports}, nil
	}
	// A whole tag or address without ports: the ports are missing.
	if whole, err := parseSelector(s, line); err == nil && (whole.Kind == KindTag || whole.Kind == KindCIDR) {
		return Dest{Selector: whole}, needPorts
	}
	if selErr != nil {
		return Dest{Selector: sel}, selErr
	}
	return Dest{Selector: sel}, &Error{Code: api.CodeInvalidPort, Line: line, Msg: fmt.Sprintf("%q: %v", s, portErr)}
}

// parsePorts parses "*" (nil: every port) or a comma list of ports and
// ranges, returned sorted with overlaps merged.
func parsePorts(s string) ([]api.PortRange, error) {
	if s == "*" {
		return nil, nil
	}
	var out []api.PortRange
	for _, f := range strings.Split(s, ",") {
		if f == "*" {
			return nil, nil
		}
		pr, err := api.ParsePortRange(f)
		if err != nil {
			return nil, fmt.Errorf("want ports like :80, :8000-8099, :80,443 or :*: %w", err)
		}
		out = append(out, pr)
	}
	return mergePorts(out), nil
}

// mergePorts sorts ranges and merges overlapping or adjacent ones. A
// result covering every port is nil.
func mergePorts(rs []api.PortRange) []api.PortRange {
	sort.Slice(rs, func(i, j int) bool { return rs[i].First < rs[j].First })
	out := rs[:0]
	for _, r := range rs {
		if n := len(out); n > 0 && uint32(r.First) <= uint32(out[n-1].Last)+1 {
			out[n-1].Last = max(out[n-1].Last, r.Last)
			continue
		}
		out = append(out, r)
	}
	if len(out) == 1 && out[0].First == 1 && out[0].Last == 65535 {
		return nil
	}
	return out
}

// CheckTagName reports whether name may be a tag ("tag:NAME", a join
// token's --tag): 1 to MaxNameLen bytes of printable UTF-8 without spaces,
// ':', '/', '*', ',', '"' or '\'.
func CheckTagName(name string) error { return checkName("tag name", name) }
