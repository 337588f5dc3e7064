package route

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
)

// DockerUserChain is the chain Docker reserves for the host's own rules: its
// FORWARD chain (policy DROP) jumps to it before any of Docker's rules.
const DockerUserChain = "DOCKER-USER"

// dockerUserTable is the iptables-nft table holding Docker's filter chains,
// in family ip (IPv4) and ip6 (IPv6, when Docker manages ip6tables).
const dockerUserTable = "filter"

// ErrNoDockerUser is returned when Docker's DOCKER-USER chain does not exist
// in nftables: Docker is not running, has never started on this host, runs
// with --iptables=false, or uses the iptables-legacy backend (its chains
// are then invisible to nftables).
var ErrNoDockerUser = errors.New("route: Docker's DOCKER-USER chain not found in nftables table ip filter")

// DockerUserConfig describes the DOCKER-USER rules of one mesh interface.
type DockerUserConfig struct {
	// Interface is the mesh interface, e.g. "wg0". Required.
	Interface string
	// Prefixes are the child prefixes behind Docker bridges that mesh
	// traffic may reach: one rule "iifname Interface ip daddr P accept"
	// each. Host bits are masked off. IPv6 prefixes are covered only where
	// Docker manages ip6tables (table ip6 filter has DOCKER-USER); otherwise
	// they are skipped with a log line, as Docker then filters nothing there.
	Prefixes []netip.Prefix
}

// normalize returns a validated copy.
func (c DockerUserConfig) normalize(op string) (DockerUserConfig, error) {
	if err := checkIfname(c.Interface); err != nil {
		return c, fmt.Errorf("%s: %w", op, err)
	}
	ps, err := normalizePrefixes(op, c.Prefixes)
	if err != nil {
		return c, err
	}
	c.Prefixes = ps
	return c, nil
}

// dockerRuleTag is the start of the comment of every DOCKER-USER rule made
// for interface ifname; it is how Close and crash cleanup find exactly the
// rules of that interface and never anyone else's. `iptables -S
// DOCKER-USER` shows the comment ("-m comment --comment ...").
func dockerRuleTag(ifname string) string { return "wiremesh:" + ifname + ":" }

// dockerRuleComment is the comment of the rule accepting mesh traffic to p.
func dockerRuleComment(ifname string, p netip.Prefix) string {
	return dockerRuleTag(ifname) + " mesh to " + p.String()
}

// isDockerRule reports whether comment tags a rule of interface ifname.
func isDockerRule(comment, ifname string) bool {
	return strings.HasPrefix(comment, dockerRuleTag(ifname))
}

// dockerBridgeName matches the bridges Docker creates: docker0 for the
// default network, br-<first 12 hex digits of the network id> for
// user-defined ones.
var dockerBridgeName = regexp.MustCompile(`^(docker0|br-[0-9a-f]{12})$`)

// IsDockerBridgeName reports whether name is the name Docker gives its
// bridges ("docker0", "br-0123456789ab"). A network created with the
// com.docker.network.bridge.name option has another name and is not
// recognised; pass its prefix to NewDockerUser explicitly.
func IsDockerBridgeName(name string) bool { return dockerBridgeName.MatchString(name) }

// overlaps reports whether any of bridges overlaps p.
func overlapsAny(p netip.Prefix, bridges []netip.Prefix) bool {
	for _, b := range bridges {
		if b.Overlaps(p) {
			return true
		}
	}
	return false
}
