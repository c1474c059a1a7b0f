package kafkalauncher

import (
	"fmt"
	"math"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/conveyor-ci/conveyor/sdk/hclspec"
	"github.com/conveyor-ci/conveyor/sdk/launcher"

	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkatransport"
)

// Defaults of the global block.
const (
	DefaultEmbeddedAddr      = "127.0.0.1:9092"
	DefaultPartitions        = 1
	DefaultReplicationFactor = 1
	// DefaultAgentMechanism is the SASL mechanism of the embedded broker's
	// agent users.
	DefaultAgentMechanism = kafkatransport.MechanismSCRAMSHA512
)

// globalConfig is the decoded `launcher "kafka" {}` block.
type globalConfig struct {
	Brokers           []string        `json:"brokers"`
	TopicPrefix       string          `json:"topic_prefix"`
	Partitions        float64         `json:"partitions"`
	ReplicationFactor float64         `json:"replication_factor"`
	EmbeddedAddr      string          `json:"embedded_addr"`
	TLS               *tlsConfig      `json:"tls"`
	SASL              *saslConfig     `json:"sasl"`
	Embedded          *embeddedConfig `json:"embedded"`
}

// tlsConfig is the optional `tls {}` block.
type tlsConfig struct {
	CAFile             string `json:"ca_file"`
	CertFile           string `json:"cert_file"`
	KeyFile            string `json:"key_file"`
	InsecureSkipVerify bool   `json:"insecure_skip_verify"`
}

// saslConfig is the optional `sasl {}` block.
type saslConfig struct {
	Mechanism string `json:"mechanism"`
	Username  string `json:"username"`
	Password  string `json:"password"`
}

// embeddedConfig is the optional `embedded {}` block: how the embedded
// broker secures itself. The launcher's own tls and sasl blocks stay the
// master's client side.
type embeddedConfig struct {
	TLS  *embeddedTLSConfig  `json:"tls"`
	SASL *embeddedSASLConfig `json:"sasl"`
	// ACLs is nil when unset: on when SASL has agent users.
	ACLs *bool `json:"acls"`
}

// embeddedTLSConfig is the embedded broker's `tls {}` block.
type embeddedTLSConfig struct {
	CertFile     string `json:"cert_file"`
	KeyFile      string `json:"key_file"`
	ClientCAFile string `json:"client_ca_file"`
}

// embeddedSASLConfig is the embedded broker's `sasl {}` block: the agents'
// users, named after their nodes.
type embeddedSASLConfig struct {
	Mechanism string            `json:"mechanism"`
	Users     map[string]string `json:"users"`
}

// nodeConfig is a node's `kafka {}` block: it takes nothing (yet).
type nodeConfig struct{}

// settings is a validated configuration.
type settings struct {
	transport   kafkatransport.Config
	partitions  int32
	replication int16
	// embedded is set when the plugin runs its own broker. embeddedAddr
	// is that broker's spec: its address (all it prints and logs as),
	// TLS, users and ACLs.
	embedded     bool
	embeddedAddr embeddedSpec
	// nodeless are the users of embedded.sasl.users named after no kafka
	// node, which the embedded broker does not create (nodelessUsers).
	nodeless []string
}

// globalSpec is the schema of the global block.
func globalSpec() *hclspec.Spec {
	return hclspec.NewObject(map[string]*hclspec.Spec{
		"brokers":            hclspec.NewAttr("brokers", "list(string)", false),
		"topic_prefix":       hclspec.NewDefault(hclspec.NewAttr("topic_prefix", "string", false), hclspec.NewLiteral(strconv.Quote(kafkatransport.DefaultTopicPrefix))),
		"partitions":         hclspec.NewDefault(hclspec.NewAttr("partitions", "number", false), hclspec.NewLiteral(strconv.Itoa(DefaultPartitions))),
		"replication_factor": hclspec.NewDefault(hclspec.NewAttr("replication_factor", "number", false), hclspec.NewLiteral(strconv.Itoa(DefaultReplicationFactor))),
		"embedded_addr":      hclspec.NewDefault(hclspec.NewAttr("embedded_addr", "string", false), hclspec.NewLiteral(strconv.Quote(DefaultEmbeddedAddr))),
		"tls": hclspec.NewBlock("tls", false, hclspec.NewObject(map[string]*hclspec.Spec{
			"ca_file":              hclspec.NewAttr("ca_file", "string", false),
			"cert_file":            hclspec.NewAttr("cert_file", "string", false),
			"key_file":             hclspec.NewAttr("key_file", "string", false),
			"insecure_skip_verify": hclspec.NewAttr("insecure_skip_verify", "bool", false),
		})),
		"sasl": hclspec.NewBlock("sasl", false, hclspec.NewObject(map[string]*hclspec.Spec{
			"mechanism": hclspec.NewAttr("mechanism", "string", true),
			"username":  hclspec.NewAttr("username", "string", true),
			"password":  hclspec.NewAttr("password", "string", false),
		})),
		"embedded": hclspec.NewBlock("embedded", false, hclspec.NewObject(map[string]*hclspec.Spec{
			"tls": hclspec.NewBlock("tls", false, hclspec.NewObject(map[string]*hclspec.Spec{
				"cert_file":      hclspec.NewAttr("cert_file", "string", true),
				"key_file":       hclspec.NewAttr("key_file", "string", true),
				"client_ca_file": hclspec.NewAttr("client_ca_file", "string", false),
			})),
			"sasl": hclspec.NewBlock("sasl", false, hclspec.NewObject(map[string]*hclspec.Spec{
				"mechanism": hclspec.NewDefault(hclspec.NewAttr("mechanism", "string", false), hclspec.NewLiteral(strconv.Quote(DefaultAgentMechanism))),
				"users":     hclspec.NewAttr("users", "map(string)", true),
			})),
			"acls": hclspec.NewAttr("acls", "bool", false),
		})),
	})
}

// nodeSpec is the schema of the per-node `kafka {}` block: empty.
func nodeSpec() *hclspec.Spec {
	return hclspec.NewObject(map[string]*hclspec.Spec{})
}

// defaults returns the global block's values when the block is absent.
func defaults() globalConfig {
	return globalConfig{
		TopicPrefix:       kafkatransport.DefaultTopicPrefix,
		Partitions:        DefaultPartitions,
		ReplicationFactor: DefaultReplicationFactor,
		EmbeddedAddr:      DefaultEmbeddedAddr,
	}
}

// validate checks the decoded configuration and turns it into settings.
func validate(g globalConfig) (*settings, launcher.ConfigErrors) {
	var errs launcher.ConfigErrors
	bad := func(msg string, path ...string) {
		errs = append(errs, launcher.ConfigError{Path: path, Message: msg})
	}
	s := &settings{}
	if g.TopicPrefix == "" {
		g.TopicPrefix = kafkatransport.DefaultTopicPrefix
	}
	if g.Partitions < 1 || g.Partitions > math.MaxInt32 || g.Partitions != math.Trunc(g.Partitions) {
		bad(fmt.Sprintf("partitions must be a whole number of at least 1, got %v", g.Partitions), "partitions")
	}
	s.partitions = int32(g.Partitions)
	if g.ReplicationFactor < 1 || g.ReplicationFactor > math.MaxInt16 || g.ReplicationFactor != math.Trunc(g.ReplicationFactor) {
		bad(fmt.Sprintf("replication_factor must be a whole number of at least 1, got %v", g.ReplicationFactor), "replication_factor")
	}
	s.replication = int16(g.ReplicationFactor)
	if err := kafkatransport.ValidTopicPrefix(g.TopicPrefix); err != nil {
		bad(err.Error(), "topic_prefix")
	} else if !strings.HasSuffix(g.TopicPrefix, ".") {
		// The master's ACLs (MasterACLs) cover every topic and group whose
		// name starts with the prefix: without the dot, "conveyor" would
		// also cover another installation's "conveyorX." names.
		bad(fmt.Sprintf("topic prefix %q must end in \".\" (say %q): the master's ACLs cover every topic and consumer group whose name starts with the prefix, so %q would also cover another installation's %q", g.TopicPrefix, g.TopicPrefix+".", g.TopicPrefix, g.TopicPrefix+"X."), "topic_prefix")
	}
	for _, b := range g.Brokers {
		if _, port, err := net.SplitHostPort(b); err != nil || port == "" {
			bad(fmt.Sprintf("broker %q is not host:port", b), "brokers")
		} else if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			bad(fmt.Sprintf("port %q of broker %q is not a TCP port number (1-65535)", port, b), "brokers")
		}
	}
	s.transport = kafkatransport.Config{Brokers: g.Brokers, TopicPrefix: g.TopicPrefix, ClientID: "conveyor-master"}
	if len(g.Brokers) == 0 {
		s.embedded = true
		s.transport.Brokers = []string{g.EmbeddedAddr}
		if g.ReplicationFactor > 1 {
			bad("the embedded broker is a single broker: replication_factor must be 1", "replication_factor")
		}
	} else if g.Embedded != nil {
		bad("sets up the embedded broker, which runs only when brokers is empty: drop the block, or the brokers", "embedded")
	}
	if t := g.TLS; t != nil {
		for _, f := range []struct{ name, path string }{{"ca_file", t.CAFile}, {"cert_file", t.CertFile}, {"key_file", t.KeyFile}} {
			if f.path == "" {
				continue
			}
			if _, err := os.ReadFile(f.path); err != nil {
				bad(fmt.Sprintf("cannot read %s: %v", f.path, err), "tls", f.name)
			}
		}
		if (t.CertFile == "") != (t.KeyFile == "") {
			if t.CertFile == "" {
				bad("key_file needs cert_file", "tls", "cert_file")
			} else {
				bad("cert_file needs key_file", "tls", "key_file")
			}
		}
		s.transport.TLS = &kafkatransport.TLS{CAFile: t.CAFile, CertFile: t.CertFile, KeyFile: t.KeyFile, InsecureSkipVerify: t.InsecureSkipVerify}
	}
	if a := g.SASL; a != nil {
		mech := strings.ToUpper(a.Mechanism)
		known := false
		for _, m := range kafkatransport.Mechanisms {
			known = known || m == mech
		}
		if !known {
			bad(fmt.Sprintf("unknown SASL mechanism %q (want one of %s)", a.Mechanism, strings.Join(kafkatransport.Mechanisms, ", ")), "sasl", "mechanism")
		}
		if a.Username == "" {
			bad("username must not be empty", "sasl", "username")
		}
		s.transport.SASL = &kafkatransport.SASL{Mechanism: mech, Username: a.Username, Password: a.Password}
	}
	if s.embedded {
		s.embeddedAddr = validateEmbedded(g, s.transport, bad)
	}
	if len(errs) > 0 {
		return nil, errs
	}
	// Whatever is left (a CA file without certificates, a key that does
	// not match its certificate) surfaces here.
	if _, err := s.transport.Sarama(); err != nil {
		path := []string{"brokers"}
		switch {
		case strings.Contains(err.Error(), "CA file"):
			path = []string{"tls", "ca_file"}
		case strings.Contains(err.Error(), "client certificate"):
			path = []string{"tls", "cert_file"}
		case strings.Contains(err.Error(), "sasl"):
			path = []string{"sasl"}
		}
		bad(err.Error(), path...)
		return nil, errs
	}
	return s, nil
}
