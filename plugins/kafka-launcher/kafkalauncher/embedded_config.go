package kafkalauncher

import (
	"fmt"
	"maps"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkatransport"
)

// userNameRE is the host's rule for node names: each agent user of the
// embedded broker is named after its node.
var userNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// validateEmbedded checks how the embedded broker is to run (the embedded
// block, and the launcher's tls and sasl blocks, which are the master's
// side of it) and returns its spec. client is the master's client
// configuration, already checked.
func validateEmbedded(g globalConfig, client kafkatransport.Config, bad func(msg string, path ...string)) embeddedSpec {
	spec := embeddedSpec{addr: g.EmbeddedAddr, prefix: g.TopicPrefix, client: client}
	e := g.Embedded
	if e == nil {
		e = &embeddedConfig{}
	}
	master := client.SASL

	if e.TLS == nil && client.TLS != nil {
		bad("the embedded broker speaks TLS only with embedded { tls { cert_file = ..., key_file = ... } }: add that block, or drop this one", "tls")
	}
	if e.TLS != nil {
		spec.tls = loadBrokerTLS(e.TLS, bad)
		switch {
		case client.TLS == nil:
			bad("the master reaches its embedded broker through the launcher's tls block: add tls { ca_file = \"...\" } naming the CA that signed cert_file", "embedded", "tls")
		case spec.tls != nil:
			checkMasterTLS(spec.tls, g.EmbeddedAddr, client.TLS, bad)
		}
	}

	if master != nil && master.Username == embeddedAdminUser {
		bad(fmt.Sprintf("%q is the embedded broker's own administrator: name the master otherwise", embeddedAdminUser), "sasl", "username")
	}
	if master != nil && master.Password == "" {
		bad("must not be empty with the embedded broker, which makes it the master's user", "sasl", "password")
	}
	if s := e.SASL; s != nil {
		if master == nil {
			bad("the agents' users need the master's own: add a sasl block (mechanism, username, password), the master's user on the embedded broker", "embedded", "sasl")
		}
		spec.mechanism = strings.ToUpper(s.Mechanism)
		if !slices.Contains(kafkatransport.Mechanisms, spec.mechanism) {
			bad(fmt.Sprintf("unknown SASL mechanism %q (want one of %s)", s.Mechanism, strings.Join(kafkatransport.Mechanisms, ", ")), "embedded", "sasl", "mechanism")
		}
		if len(s.Users) == 0 {
			bad("names no user: users = { NODE = PASSWORD, ... }, one per node", "embedded", "sasl", "users")
		}
		for _, name := range slices.Sorted(maps.Keys(s.Users)) {
			switch {
			case !userNameRE.MatchString(name):
				bad(fmt.Sprintf("user %q is no node name: each agent's user is named after its node", name), "embedded", "sasl", "users")
			case s.Users[name] == "":
				bad(fmt.Sprintf("user %q has an empty password", name), "embedded", "sasl", "users")
			case master != nil && name == master.Username:
				bad(fmt.Sprintf("user %q is the master's own (sasl.username): name the master otherwise", name), "embedded", "sasl", "users")
			}
		}
		spec.users = maps.Clone(s.Users)
	}

	spec.acls = len(spec.users) > 0
	if e.ACLs != nil {
		spec.acls = *e.ACLs
	}
	if spec.acls && e.SASL == nil {
		bad("ACLs need the agents' own users, embedded { sasl { users = { NODE = PASSWORD } } }: without them every agent connects as the master", "embedded", "acls")
	}

	if msg := checkEmbeddedAddr(g.EmbeddedAddr, e.TLS != nil && master != nil); msg != "" {
		bad(msg, "embedded_addr")
	}
	return spec
}

// checkEmbeddedAddr returns why addr cannot be the embedded broker's
// address, or "". Beyond loopback the broker must be secured (TLS and
// SASL), and listen on the address its clients connect to: it tells them
// to connect to addr.
func checkEmbeddedAddr(addr string, secured bool) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Sprintf("%q is not host:port: %v", addr, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Sprintf("port %q of %q is not a port number between 1 and 65535", port, addr)
	}
	ip := net.ParseIP(host)
	if host == "localhost" || (ip != nil && ip.IsLoopback()) {
		return ""
	}
	if !secured {
		return fmt.Sprintf("%q is no loopback address (127.0.0.1, ::1, localhost): beyond loopback the embedded broker needs TLS (embedded { tls { ... } }) and SASL (a sasl block); or set brokers to use an external cluster", host)
	}
	if host == "" || (ip != nil && ip.IsUnspecified()) {
		return fmt.Sprintf("listen on the address the agents connect to, not %q: the broker tells its clients to connect to embedded_addr", addr)
	}
	return ""
}

// agentSASL returns the SASL mechanism and user the agent of node
// connects with, never the master's: on the embedded broker, the node's
// own user (agent users are named after their nodes) in the embedded sasl
// block's mechanism; on an external cluster, agentUser in the mechanism of
// the launcher's sasl block. ok is false when the brokers take no SASL.
func (s *settings) agentSASL(node string) (mechanism, user string, ok bool) {
	master := s.transport.SASL
	if master == nil {
		return "", "", false
	}
	if s.embedded {
		mechanism = s.embeddedAddr.mechanism
		if mechanism == "" {
			mechanism = DefaultAgentMechanism
		}
		return mechanism, node, true
	}
	return master.Mechanism, agentUser(node), true
}

// agentNeedsCert reports whether the brokers ask the agents for a client
// certificate: the embedded broker with embedded.tls.client_ca_file, an
// external cluster when the master itself presents one (tls.cert_file).
func (s *settings) agentNeedsCert() bool {
	if s.embedded {
		return s.embeddedAddr.tls != nil && s.embeddedAddr.tls.clientCAs != nil
	}
	return s.transport.TLS != nil && s.transport.TLS.CertFile != ""
}
