package sshdtest

import (
	"fmt"

	"github.com/conveyor-ci/conveyor/core/e2e/cluster"
)

// NodeSSH is what a test node's `ssh {}` block says: how the build host is
// reached and its host key checked, where the agent and its workspace go.
type NodeSSH struct {
	Host       string
	Port       int
	User       string
	KeyFile    string
	AgentPath  string
	Workdir    string
	KnownHosts string
	// Extra is more of the block's body (HCL attributes, one a line),
	// after the others: an attribute here must not be one of them.
	Extra string
}

// Node returns a NodeSSH reaching s with its own client key and
// known_hosts file.
func (s *Server) Node(agentPath, workdir string) NodeSSH {
	return NodeSSH{Host: s.Host, Port: s.Port, User: s.User, KeyFile: s.ClientKeyFile,
		AgentPath: agentPath, Workdir: workdir, KnownHosts: s.KnownHostsFile}
}

// Block is the `ssh {}` block, indented to sit in a node block; it
// retries quickly, as tests want.
func (n NodeSSH) Block() string {
	return fmt.Sprintf(`  ssh {
    host             = %q
    port             = %d
    user             = %q
    private_key_file = %s
    agent_path       = %s
    workdir          = %s
    retry_wait       = "200ms"
    max_retries      = 100
    host_key_verification {
      strategy         = "known_hosts"
      known_hosts_file = %s
    }
%s  }
`, n.Host, n.Port, n.User, cluster.HCLString(n.KeyFile), cluster.HCLString(n.AgentPath),
		cluster.HCLString(n.Workdir), cluster.HCLString(n.KnownHosts), n.Extra)
}
