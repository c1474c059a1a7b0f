// Package kafkalauncher is the Kafka launcher plugin: the master and each
// node's agent exchange frames over two Kafka topics per node (see
// kafkatransport). Agents run wherever they like and connect to the
// cluster themselves; Launch opens the master's side and waits for nothing
// (the session handshake above waits for the agent's Hello). The plugin
// also manages node secrets (derived from a master key in its data
// directory) and, when no brokers are configured, runs an embedded broker
// whose data lives in its data directory.
//
//	launcher "kafka" {
//	  brokers            = ["kafka-1:9092", "kafka-2:9092"] # empty: embedded broker
//	  topic_prefix       = "conveyor."
//	  partitions         = 1
//	  replication_factor = 3
//	  embedded_addr      = "127.0.0.1:9092"
//	  tls  { ca_file = "ca.pem" cert_file = "c.pem" key_file = "k.pem" insecure_skip_verify = false }
//	  sasl { mechanism = "SCRAM-SHA-512" username = "conveyor" password = "..." }
//	}
//
//	node "builder" {
//	  launcher = "kafka"
//	  kafka {}
//	}
package kafkalauncher

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/sdk/launcher"

	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkatransport"
)

// Name is the launcher's name, as used in `launcher "kafka" {}`.
const Name = "kafka"

// Version is the plugin's version; set by the build.
var Version = "0.1.0"

// AgentWorkdir is the agent work directory in the command NodeSecret returns.
const AgentWorkdir = "/var/lib/conveyor-agent"

// Files the agent command refers to, relative to the directory the agent
// starts in: the operator writes there the node secret, the password of
// the node's own Kafka user and, where the brokers require client
// certificates, the agent's own certificate and key (never the master's).
const (
	AgentSecretFile       = "secret"
	AgentSASLPasswordFile = "sasl-password"
	AgentTLSCertFile      = "agent.pem"
	AgentTLSKeyFile       = "agent-key.pem"
)

// Launcher is the Kafka launcher. It implements launcher.Launcher,
// launcher.SecretManager, launcher.Purger and launcher.Commander.
type Launcher struct {
	log hclog.Logger

	mu      sync.Mutex
	set     *settings // nil until configured
	checked *settings // the last configuration accepted, also in validate-only mode (operator commands)
	key     []byte
	broker  *embeddedBroker
	// client is the one Kafka client every node's connection shares
	// (opened at the first launch); conns are the nodes' connections on it.
	client   *kafkatransport.Client
	clientMu sync.Mutex // serializes opening and closing client
	conns    map[string]*kafkatransport.Conn
	launches map[string]int64 // connections opened per node
	// malformed counts what the node's closed connections dropped before
	// decoding (kafkatransport.Conn.Malformed); LinkStats adds the open one's.
	malformed map[string]uint64
	startMu   sync.Mutex // serializes starting and stopping the embedded broker
	shutdown  bool
}

var (
	_ launcher.Launcher      = (*Launcher)(nil)
	_ launcher.SecretManager = (*Launcher)(nil)
	_ launcher.Purger        = (*Launcher)(nil)
	_ launcher.Commander     = (*Launcher)(nil)
	_ launcher.LinkStater    = (*Launcher)(nil)
)

// New returns an unconfigured launcher logging to logger.
func New(logger hclog.Logger) *Launcher {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	return &Launcher{log: logger.Named("kafka-launcher"), conns: map[string]*kafkatransport.Conn{}, launches: map[string]int64{}, malformed: map[string]uint64{}}
}

// Info implements launcher.Launcher.
func (l *Launcher) Info(context.Context) (*launcher.Info, error) {
	return &launcher.Info{
		Name:         Name,
		Version:      Version,
		Description:  "agents connect through Kafka topics (an embedded broker when no brokers are configured)",
		Capabilities: []string{launcher.CapSecrets, launcher.CapPurge, launcher.CapResume, launcher.CapCommands, launcher.CapStats},
	}, nil
}

// Schema implements launcher.Launcher.
func (l *Launcher) Schema(context.Context) (*launcher.Schema, error) {
	return &launcher.Schema{Global: globalSpec(), Node: nodeSpec()}, nil
}

// Configure implements launcher.Launcher: it validates the configuration
// and, unless the host only validates, creates the master key, starts the
// embedded broker (when no brokers are configured) and creates every
// node's topics.
func (l *Launcher) Configure(ctx context.Context, cfg *launcher.Config) error {
	g := defaults()
	if !cfg.Global.IsNull() {
		if err := cfg.DecodeGlobal(&g); err != nil {
			return launcher.ConfigErrors{{Message: err.Error()}}
		}
	}
	set, errs := validate(g)
	for _, n := range cfg.Nodes {
		var nc nodeConfig
		if err := n.Decode(&nc); err != nil {
			errs = append(errs, launcher.ConfigError{Node: n.Name, Message: fmt.Sprintf("the kafka block takes no settings: %v", err)})
		}
	}
	if len(errs) > 0 {
		return errs
	}
	warnings := nodelessUsers(set, cfg.Nodes)
	l.mu.Lock()
	l.checked = set
	l.mu.Unlock()
	if cfg.Host.ValidateOnly {
		return warningsOrNil(warnings)
	}
	for _, w := range warnings {
		// The server does not print a plugin's warnings: the log does.
		l.log.Warn(w.Message)
	}
	if cfg.Host.DataDir == "" {
		return errors.New("kafka launcher: the host gave no data directory")
	}
	key, err := loadOrCreateKey(cfg.Host.DataDir)
	if err != nil {
		return fmt.Errorf("kafka launcher: %w", err)
	}
	if set.embedded {
		if err := l.ensureBroker(ctx, cfg.Host.DataDir, set); err != nil {
			return err
		}
	} else {
		l.stopBroker()
	}
	var topics []string
	for _, n := range cfg.Nodes {
		t := kafkatransport.TopicsFor(set.transport.TopicPrefix, n.Name)
		topics = append(topics, t.Commands, t.Events)
	}
	if len(topics) > 0 {
		if err := kafkatransport.EnsureTopics(ctx, set.transport, topics, set.partitions, set.replication); err != nil {
			return fmt.Errorf("kafka launcher: %w", err)
		}
	}
	l.mu.Lock()
	old := l.set
	l.set, l.key = set, key
	l.mu.Unlock()
	if old != nil && !reflect.DeepEqual(old.transport, set.transport) {
		// The shared client talks to the old cluster, or as the old user:
		// its connections go with it, and the next launch opens a new one.
		l.closeConns()
	}
	l.log.Info("configured", "brokers", strings.Join(set.transport.Brokers, ","), "embedded", set.embedded, "nodes", len(cfg.Nodes))
	return warningsOrNil(warnings)
}

// nodelessUsers drops from the embedded broker's users those named after
// no kafka node of nodes (a node removed from the configuration, a typo):
// the broker does not create them, so a removed node's agent can no
// longer log in. It returns a warning for each.
func nodelessUsers(set *settings, nodes []*launcher.Node) launcher.ConfigErrors {
	if !set.embedded || len(set.embeddedAddr.users) == 0 {
		return nil
	}
	known := map[string]bool{}
	for _, n := range nodes {
		known[n.Name] = true
	}
	var warnings launcher.ConfigErrors
	users := map[string]string{}
	for _, u := range slices.Sorted(maps.Keys(set.embeddedAddr.users)) {
		if known[u] {
			users[u] = set.embeddedAddr.users[u]
			continue
		}
		set.nodeless = append(set.nodeless, u)
		warnings = append(warnings, launcher.ConfigError{Path: []string{"embedded", "sasl", "users"}, Warning: true,
			Message: fmt.Sprintf("user %q is named after no kafka node: the embedded broker does not create it (if its node was removed, remove the user too; `conveyor node delete %s -purge` deletes the node's topics and groups)", u, u)})
	}
	set.embeddedAddr.users = users
	return warnings
}

// warningsOrNil returns ws as an error, or nil if there are none.
func warningsOrNil(ws launcher.ConfigErrors) error {
	if len(ws) == 0 {
		return nil
	}
	return ws
}

// ensureBroker starts the embedded broker, or restarts it if it runs with
// other settings.
func (l *Launcher) ensureBroker(ctx context.Context, dataDir string, set *settings) error {
	l.startMu.Lock()
	defer l.startMu.Unlock()
	l.mu.Lock()
	b := l.broker
	l.mu.Unlock()
	if b != nil && b.same(dataDir, set.embeddedAddr, set.transport.SASL) {
		return nil
	}
	if b != nil {
		l.closeConns()
		b.close()
		l.log.Info("embedded Kafka broker stopped", "addr", b.addr)
	}
	b, err := startEmbedded(ctx, dataDir, set.embeddedAddr, set.transport.SASL, l.log.Named("embedded-broker"))
	l.mu.Lock()
	l.broker = b
	l.mu.Unlock()
	if err != nil {
		return fmt.Errorf("kafka launcher: %w", err)
	}
	l.log.Info("embedded Kafka broker started", "addr", set.embeddedAddr, "data_dir", b.dir)
	return nil
}

// stopBroker stops the embedded broker if it runs.
func (l *Launcher) stopBroker() {
	l.startMu.Lock()
	defer l.startMu.Unlock()
	l.mu.Lock()
	b := l.broker
	l.broker = nil
	l.mu.Unlock()
	if b != nil {
		l.closeConns()
		b.close()
		l.log.Info("embedded Kafka broker stopped", "addr", b.addr)
	}
}

// closeConns closes every open connection, then the client they share.
func (l *Launcher) closeConns() {
	l.clientMu.Lock()
	defer l.clientMu.Unlock()
	l.mu.Lock()
	conns := l.conns
	l.conns = map[string]*kafkatransport.Conn{}
	for node, c := range conns {
		l.malformed[node] += c.Malformed()
	}
	client := l.client
	l.client = nil
	l.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() { _ = c.Close() })
	}
	wg.Wait()
	if client != nil {
		if err := client.Close(); err != nil {
			l.log.Debug("kafka client closed with errors", "error", err)
		}
	}
}

// sharedClient returns the Kafka client every node's connection shares,
// connecting it at the first call.
func (l *Launcher) sharedClient(ctx context.Context, set *settings) (*kafkatransport.Client, error) {
	l.clientMu.Lock()
	defer l.clientMu.Unlock()
	l.mu.Lock()
	client, current := l.client, l.set
	l.mu.Unlock()
	if client != nil {
		return client, nil
	}
	if current != set {
		return nil, errors.New("kafka launcher: reconfigured during the launch")
	}
	client, err := kafkatransport.NewClient(ctx, set.transport, l.log)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.client = client
	l.mu.Unlock()
	l.log.Info("kafka client connected: every node's connection shares it", "brokers", strings.Join(set.transport.Brokers, ","))
	return client, nil
}

// settings returns the current configuration.
func (l *Launcher) settings() (*settings, []byte, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.set == nil {
		return nil, nil, errors.New("kafka launcher is not configured")
	}
	return l.set, l.key, nil
}

// checkedSettings returns the last configuration Configure accepted,
// validate-only or not: `conveyor kafka COMMAND` configures the plugin
// only to check it.
func (l *Launcher) checkedSettings() (*settings, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.checked == nil {
		return nil, errors.New("kafka launcher is not configured")
	}
	return l.checked, nil
}

// Launch implements launcher.Launcher: it makes sure the node's topics
// exist and opens the master's side of them. The agent connects on its
// own, whenever it runs; frames sent before it does wait in the topic.
func (l *Launcher) Launch(ctx context.Context, node *launcher.Node) (launcher.Conn, error) {
	set, _, err := l.settings()
	if err != nil {
		return nil, err
	}
	var nc nodeConfig
	if err := node.Decode(&nc); err != nil {
		return nil, launcher.ConfigErrors{{Node: node.Name, Message: fmt.Sprintf("the kafka block takes no settings: %v", err)}}
	}
	// A node has one connection: a relaunch replaces it.
	_ = l.Teardown(ctx, node.Name)
	client, err := l.sharedClient(ctx, set)
	if err != nil {
		return nil, fmt.Errorf("launch %s: %w", node.Name, err)
	}
	t := kafkatransport.TopicsFor(set.transport.TopicPrefix, node.Name)
	if err := client.EnsureTopics(ctx, []string{t.Commands, t.Events}, set.partitions, set.replication); err != nil {
		return nil, fmt.Errorf("launch %s: %w", node.Name, err)
	}
	conn, err := client.OpenMaster(ctx, node.Name)
	if err != nil {
		return nil, fmt.Errorf("launch %s: %w", node.Name, err)
	}
	l.mu.Lock()
	if l.client != client {
		// The client closed meanwhile (reconfiguration, shutdown).
		l.mu.Unlock()
		_ = conn.Close()
		return nil, fmt.Errorf("launch %s: kafka launcher reconfigured or closed during the launch", node.Name)
	}
	old := l.conns[node.Name]
	l.conns[node.Name] = conn
	l.launches[node.Name]++
	if old != nil {
		l.malformed[node.Name] += old.Malformed()
	}
	l.mu.Unlock()
	if old != nil {
		_ = old.Close()
	}
	l.log.Info("node connected to its topics", "node", node.Name, "commands", t.Commands, "events", t.Events)
	return conn, nil
}

// LinkStats implements launcher.LinkStater: the node's connection, its
// two topics and how far behind each topic's reader is.
func (l *Launcher) LinkStats(_ context.Context, node string) (*launcher.LinkStats, error) {
	set, _, err := l.settings()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	conn := l.conns[node]
	launches := l.launches[node]
	malformed := l.malformed[node]
	if conn != nil {
		malformed += conn.Malformed()
	}
	l.mu.Unlock()
	st := &launcher.LinkStats{Endpoint: "kafka " + strings.Join(set.transport.Brokers, ","), Reconnects: max(launches-1, 0), Malformed: malformed}
	t := kafkatransport.TopicsFor(set.transport.TopicPrefix, node)
	g := kafkatransport.GroupsFor(set.transport.TopicPrefix, node)
	st.Topics = []launcher.TopicStats{
		{Name: t.Commands, Direction: launcher.ToAgent, Group: g.Agent, Lag: -1},
		{Name: t.Events, Direction: launcher.ToMaster, Group: g.Master, Lag: -1},
	}
	if conn == nil {
		return st, nil
	}
	st.Connected, st.Since = true, conn.Opened()
	for i := range st.Topics {
		ts := &st.Topics[i]
		lag, err := conn.Lag(ts.Name, ts.Group)
		if err != nil {
			l.log.Debug("link stats: lag unknown", "node", node, "topic", ts.Name, "error", err)
			continue
		}
		ts.Lag = lag
	}
	return st, nil
}

// Teardown implements launcher.Launcher: it closes the node's connection
// (committing what was received). The agent keeps running.
func (l *Launcher) Teardown(_ context.Context, node string) error {
	l.mu.Lock()
	conn := l.conns[node]
	delete(l.conns, node)
	if conn != nil {
		l.malformed[node] += conn.Malformed()
	}
	l.mu.Unlock()
	if conn == nil {
		return nil
	}
	if err := conn.Close(); err != nil {
		return fmt.Errorf("teardown %s: %w", node, err)
	}
	l.log.Info("node connection closed", "node", node)
	return nil
}

// Purge implements launcher.Purger: it closes the node's connection and
// deletes its two topics and its two consumer groups. Purging a node with
// nothing left is no error.
func (l *Launcher) Purge(ctx context.Context, node string) error {
	set, _, err := l.settings()
	if err != nil {
		return err
	}
	if err := l.Teardown(ctx, node); err != nil {
		l.log.Warn("purge: closing the connection failed", "node", node, "error", err)
	}
	t := kafkatransport.TopicsFor(set.transport.TopicPrefix, node)
	g := kafkatransport.GroupsFor(set.transport.TopicPrefix, node)
	if err := kafkatransport.DeleteTopics(ctx, set.transport, []string{t.Commands, t.Events}); err != nil {
		return fmt.Errorf("purge %s: %w", node, err)
	}
	if err := kafkatransport.DeleteGroups(ctx, set.transport, []string{g.Master, g.Agent}); err != nil {
		return fmt.Errorf("purge %s: %w", node, err)
	}
	l.log.Info("node purged", "node", node, "topics", t.Commands+","+t.Events, "groups", g.Master+","+g.Agent)
	if !set.embedded {
		if set.transport.SASL != nil {
			// The master has no right to administer ACLs or users here
			// (MasterACLs): what the agent's identity holds is left.
			user := agentUser(node)
			userHow := fmt.Sprintf("kafka-configs.sh --alter --delete-config %s --entity-type users --entity-name %s", set.transport.SASL.Mechanism, user)
			if set.transport.SASL.Mechanism == kafkatransport.MechanismPlain {
				userHow = fmt.Sprintf("remove %s from the brokers' PLAIN users (their JAAS configuration)", user)
			}
			l.log.Warn("purge: the node's Kafka user and ACLs on the external cluster are left: an administrator removes them",
				"node", node, "principal", Principal(user),
				"acls", fmt.Sprintf("kafka-acls.sh --remove --allow-principal %s (the principal `conveyor kafka acls -principal` named, %s by default)", Principal(user), DefaultAgentPrincipal),
				"user", userHow)
		}
		return nil
	}
	l.mu.Lock()
	b := l.broker
	l.mu.Unlock()
	if b == nil {
		return nil
	}
	removed, err := b.forgetUser(ctx, node)
	if err != nil {
		return fmt.Errorf("purge %s: remove its Kafka user from the embedded broker: %w", node, err)
	}
	if len(removed) > 0 {
		l.log.Info("node's Kafka user removed from the embedded broker", "node", node, "removed", strings.Join(removed, ", "))
	}
	if slices.Contains(set.nodeless, node) {
		l.log.Warn("purge: embedded.sasl.users still names the node: its user returns on the next start if the node is configured again; remove it from the configuration", "node", node)
	}
	return nil
}

// NodeSecret implements launcher.SecretManager: the node's secret is
// HMAC-SHA256(master key, node name); the command starts conveyor-agent
// against the configured cluster with the node's own Kafka identity.
func (l *Launcher) NodeSecret(_ context.Context, node string) (*launcher.NodeSecret, error) {
	if node == "" {
		return nil, errors.New("node secret: empty node name")
	}
	set, key, err := l.settings()
	if err != nil {
		return nil, err
	}
	if set.embedded && set.transport.SASL != nil {
		if _, ok := set.embeddedAddr.users[node]; !ok {
			l.log.Warn("the embedded broker has no Kafka user for this node: its agent cannot connect until embedded.sasl.users names it", "node", node)
		}
	}
	return &launcher.NodeSecret{Secret: nodeSecret(key, node), AgentCommand: agentCommand(set, node)}, nil
}

// agentCommand is the conveyor-agent command line for node. It names the
// node's own Kafka identity, never the master's (the holder of
// MasterACLs): the SASL user of agentSASL, its password in
// AgentSASLPasswordFile, and where the brokers require client
// certificates the agent's own in AgentTLSCertFile and AgentTLSKeyFile.
// Of the launcher's tls block only what the agent shares with the master
// appears: the CA that signed the brokers' certificates.
func agentCommand(set *settings, node string) []string {
	cmd := []string{"conveyor-agent", "-name", node, "-secret-file", AgentSecretFile, "-brokers", strings.Join(set.transport.Brokers, ",")}
	if p := set.transport.TopicPrefix; p != "" && p != kafkatransport.DefaultTopicPrefix {
		cmd = append(cmd, "-topic-prefix", p)
	}
	if t := set.transport.TLS; t != nil {
		cert := set.agentNeedsCert()
		if t.CAFile != "" {
			cmd = append(cmd, "-tls-ca", t.CAFile)
		}
		if cert {
			cmd = append(cmd, "-tls-cert", AgentTLSCertFile, "-tls-key", AgentTLSKeyFile)
		}
		if t.InsecureSkipVerify {
			cmd = append(cmd, "-tls-insecure-skip-verify")
		}
		if t.CAFile == "" && !cert && !t.InsecureSkipVerify {
			cmd = append(cmd, "-tls")
		}
	}
	if mech, user, ok := set.agentSASL(node); ok {
		cmd = append(cmd, "-sasl-mechanism", mech, "-sasl-user", user, "-sasl-password-file", AgentSASLPasswordFile)
	}
	return append(cmd, "-workdir", AgentWorkdir)
}

// agentUser is the SASL user of node's agent on an external cluster: the
// user of DefaultAgentPrincipal, the principal `conveyor kafka acls`
// grants the node's ACLs to by default (conveyor-agent-NODE).
func agentUser(node string) string {
	return strings.ReplaceAll(strings.TrimPrefix(DefaultAgentPrincipal, "User:"), nodePlaceholder, node)
}

// Close closes every connection and stops the embedded broker. The plugin
// process calls it on its way out.
func (l *Launcher) Close() {
	l.closeConns()
	l.stopBroker()
}
