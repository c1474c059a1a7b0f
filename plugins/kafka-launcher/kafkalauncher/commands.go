package kafkalauncher

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/conveyor-ci/conveyor/sdk/launcher"
)

// DefaultAgentPrincipal is the default of `conveyor kafka acls -principal`:
// the Kafka principal of each node's agent, {node} standing for the node's
// name.
const DefaultAgentPrincipal = "User:conveyor-agent-{node}"

// embeddedAgentPrincipal is the principal of a node's agent on the
// embedded broker, whose agent users are named after their nodes: the
// default of -principal there.
const embeddedAgentPrincipal = "User:{node}"

// nodePlaceholder stands for the node's name in a principal template.
const nodePlaceholder = "{node}"

// Commands implements launcher.Commander: the operator commands of
// `conveyor kafka COMMAND`.
func (l *Launcher) Commands(context.Context) ([]launcher.Command, error) {
	return []launcher.Command{
		{Name: "acls", Help: "print (with -apply, create) the ACLs that confine each agent to its own topics and group"},
	}, nil
}

// RunCommand implements launcher.Commander.
func (l *Launcher) RunCommand(ctx context.Context, req *launcher.CommandRequest) (string, error) {
	switch req.Name {
	case "acls":
		return l.acls(ctx, req.Args, req.Nodes)
	}
	return "", fmt.Errorf("unknown command %q (the kafka launcher has: acls)", req.Name)
}

const aclsUsage = `Usage: conveyor kafka acls -config FILE [-apply] [-principal TEMPLATE] [-master-principal User:NAME] [NODE...]

Prints the Kafka ACLs that confine Conveyor on a cluster with an
authorizer, where whatever no ACL allows is denied:
  - the master's (of the launcher block's sasl user, or -master-principal):
    create, write, read and delete the topics under the topic prefix, read
    and delete the consumer groups under it, idempotent writes; no topic
    or group outside the prefix, no ACL or user administration;
  - each node's agent's (of every configured kafka node, or of the NODEs
    named): read only its own commands topic, commit offsets only in its
    own consumer group, write only its own events topic.
With -apply it creates them through the admin API of the configured
brokers, as the launcher block's sasl user, who needs Alter on the
cluster: run it once as an administrator (a sasl block naming one, and
-master-principal naming the master's own user), so that the master's
user itself needs no Alter. The embedded broker (no brokers configured)
sets up the same ACLs itself.

Options:
`

// acls is `conveyor kafka acls`.
func (l *Launcher) acls(ctx context.Context, args []string, nodes []*launcher.Node) (string, error) {
	fs := flag.NewFlagSet("acls", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	apply := fs.Bool("apply", false, "create the ACLs (the embedded broker takes its ACLs from its configuration instead)")
	principal := fs.String("principal", DefaultAgentPrincipal, "each node's agent's Kafka principal, User:NAME, as a `TEMPLATE` where "+nodePlaceholder+" stands for the node's name; with the embedded broker the default is "+embeddedAgentPrincipal)
	masterFlag := fs.String("master-principal", "", "the master's Kafka principal, `User:NAME` (default: the launcher block's sasl username; none without a sasl block)")
	if err := fs.Parse(args); err != nil {
		var usage strings.Builder
		usage.WriteString(aclsUsage)
		fs.SetOutput(&usage)
		fs.PrintDefaults()
		if errors.Is(err, flag.ErrHelp) {
			return usage.String(), nil
		}
		return "", fmt.Errorf("%v\n\n%s", err, usage.String())
	}
	set, err := l.checkedSettings()
	if err != nil {
		return "", err
	}
	nodes, err = selectNodes(nodes, fs.Args())
	if err != nil {
		return "", err
	}
	if set.embedded && !flagSet(fs, "principal") {
		*principal = embeddedAgentPrincipal
	}
	byNode, err := agentACLs(set.transport.TopicPrefix, *principal, nodes)
	if err != nil {
		return "", err
	}
	masterUser := ""
	if set.transport.SASL != nil {
		masterUser = set.transport.SASL.Username
	}
	if flagSet(fs, "master-principal") {
		u, ok := strings.CutPrefix(*masterFlag, "User:")
		if !ok || u == "" {
			return "", fmt.Errorf("-master-principal %q: want User:NAME", *masterFlag)
		}
		masterUser = u
	}
	for i, n := range nodes {
		if masterUser != "" && byNode[i][0].Principal == Principal(masterUser) {
			return "", fmt.Errorf("node %s's agent would be the master's own principal %s: the agent could then write its own commands; give the agents their own principals", n.Name, Principal(masterUser))
		}
	}
	var master []ACL
	if masterUser != "" {
		master = MasterACLs(set.transport.TopicPrefix, masterUser)
	}
	if len(nodes) == 0 && master == nil {
		return "No node uses the kafka launcher and the master has no sasl user: there is nothing to grant.\n", nil
	}

	var out strings.Builder
	table := func(title string, acls []ACL) {
		if out.Len() > 0 {
			out.WriteString("\n")
		}
		out.WriteString(title + ":\n")
		tw := tabwriter.NewWriter(&out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  PRINCIPAL\tPERMISSION\tOPERATION\tRESOURCE\tNAME\tPATTERN\tHOST")
		for _, a := range acls {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.Principal, a.Permission, a.Operation, a.Resource, a.Name, a.Pattern, a.Host)
		}
		_ = tw.Flush()
	}
	if master != nil {
		table("Master "+Principal(masterUser), master)
	}
	total := len(master)
	for i, n := range nodes {
		table("Node "+n.Name, byNode[i])
		total += len(byNode[i])
	}
	out.WriteString("\n")
	whom := fmt.Sprintf("%d nodes", len(nodes))
	if master != nil {
		whom = "the master and " + whom
	}
	if set.embedded {
		out.WriteString("These are the ACLs the embedded broker (no brokers configured) sets up itself for the\n" +
			"master's user (the launcher's sasl block) and for the agents' users that\n" +
			"embedded { sasl { users = { NODE = PASSWORD } } } names after their nodes; its ACLs\n" +
			"are configured in that block, not through -apply.\n")
		if *apply {
			return out.String(), errors.New("-apply: nothing created: the embedded broker's users and ACLs are configured in its embedded {} block")
		}
		return out.String(), nil
	}
	if !*apply {
		fmt.Fprintf(&out, "%d ACLs for %s; nothing changed: -apply creates them.\n", total, whom)
		return out.String(), nil
	}

	fmt.Fprintf(&out, "Creating them on %s as %s:\n", strings.Join(set.transport.Brokers, ","), masterPrincipal(set))
	created := 0
	if master != nil {
		if err := ApplyACLs(ctx, set.transport, master); err != nil {
			fmt.Fprintf(&out, "Created no ACL: failed on the master's.\n")
			return out.String(), fmt.Errorf("the master's ACLs: %w", err)
		}
		for _, a := range master {
			fmt.Fprintf(&out, "  created %s\n", a)
		}
		created += len(master)
	}
	for i, n := range nodes {
		if err := ApplyACLs(ctx, set.transport, byNode[i]); err != nil {
			fmt.Fprintf(&out, "Created %d ACLs for %d of %d nodes, then failed on node %s.\n", created, i, len(nodes), n.Name)
			return out.String(), fmt.Errorf("node %s: %w", n.Name, err)
		}
		for _, a := range byNode[i] {
			fmt.Fprintf(&out, "  created %s\n", a)
		}
		created += len(byNode[i])
	}
	fmt.Fprintf(&out, "Created %d ACLs for %s (creating an ACL that exists changes nothing).\n", created, whom)
	return out.String(), nil
}

// flagSet reports whether the flag name was given.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// masterPrincipal names whom the launcher connects as.
func masterPrincipal(set *settings) string {
	if set.transport.SASL == nil {
		return "the launcher's client (no sasl block)"
	}
	return Principal(set.transport.SASL.Username)
}

// selectNodes returns the nodes named, in configuration order; none named
// is all of them.
func selectNodes(nodes []*launcher.Node, names []string) ([]*launcher.Node, error) {
	if len(names) == 0 {
		return nodes, nil
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	var out []*launcher.Node
	for _, n := range nodes {
		if want[n.Name] {
			out = append(out, n)
			delete(want, n.Name)
		}
	}
	for _, n := range names {
		if want[n] {
			return nil, fmt.Errorf("no kafka node %q in the configuration", n)
		}
	}
	return out, nil
}

// agentACLs returns the ACLs of each node's agent, its principal made from
// template. Two nodes may not share a principal: each agent could then
// read the other's commands.
func agentACLs(prefix, template string, nodes []*launcher.Node) ([][]ACL, error) {
	user, ok := strings.CutPrefix(template, "User:")
	if !ok || user == "" {
		return nil, fmt.Errorf("-principal %q: want User:NAME, e.g. %s", template, DefaultAgentPrincipal)
	}
	owner := map[string]string{}
	out := make([][]ACL, len(nodes))
	for i, n := range nodes {
		u := strings.ReplaceAll(user, nodePlaceholder, n.Name)
		if other, dup := owner[u]; dup {
			return nil, fmt.Errorf("-principal %q gives nodes %s and %s the same principal %s: each agent could read the other's commands; put %s in it",
				template, other, n.Name, Principal(u), nodePlaceholder)
		}
		owner[u] = n.Name
		out[i] = NodeACLs(prefix, n.Name, u)
	}
	return out, nil
}
