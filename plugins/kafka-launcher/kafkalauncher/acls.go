package kafkalauncher

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkatransport"
)

// ACL is one Kafka ACL binding in plain words, as kafka-acls.sh names
// them: Principal may do Operation on the resource (Resource, Name,
// Pattern) from Host, or (PermissionDeny) may not. NodeACLs and MasterACLs
// build the bindings Conveyor needs; Kfake, SaramaACLs and ApplyACLs hand
// them to a broker.
type ACL struct {
	// Principal is whom the binding is for: "User:NAME", NAME being the
	// SASL user name.
	Principal string
	// Host is the client address the binding applies to; "*" is any.
	Host string
	// Resource is ResourceTopic, ResourceGroup or ResourceCluster.
	Resource string
	// Name is the topic or consumer group name, or ClusterName.
	Name string
	// Pattern is PatternLiteral (Name itself) or PatternPrefixed (every
	// name starting with Name).
	Pattern string
	// Operation is one of the Operation constants.
	Operation string
	// Permission is PermissionAllow or PermissionDeny.
	Permission string
}

// Values of ACL's fields, spelled as Kafka spells them. Parsing ignores
// case.
const (
	ResourceTopic   = "Topic"
	ResourceGroup   = "Group"
	ResourceCluster = "Cluster"

	PatternLiteral  = "Literal"
	PatternPrefixed = "Prefixed"

	OperationAll             = "All"
	OperationRead            = "Read"
	OperationWrite           = "Write"
	OperationCreate          = "Create"
	OperationDelete          = "Delete"
	OperationAlter           = "Alter"
	OperationDescribe        = "Describe"
	OperationDescribeConfigs = "DescribeConfigs"
	OperationIdempotentWrite = "IdempotentWrite"

	PermissionAllow = "Allow"
	PermissionDeny  = "Deny"

	// ClusterName is the name of the one cluster resource.
	ClusterName = "kafka-cluster"
	// AnyHost matches every client address.
	AnyHost = "*"
)

// Principal returns the principal of SASL user user: "User:USER".
func Principal(user string) string { return "User:" + user }

// NodeACLs returns what node's agent, connecting as SASL user user, needs
// on a cluster whose topics carry prefix (kafkatransport.DefaultTopicPrefix
// if empty), and nothing more:
//
//   - Read on the node's commands topic (PREFIXNODE.commands),
//   - Write on the node's events topic (PREFIXNODE.events),
//   - Read on the agent's consumer group (PREFIXagent.NODE), where it
//     commits what it has handled,
//   - IdempotentWrite on the cluster, which the idempotent producer needs
//     on brokers before Kafka 3.0 (later ones accept Write on a topic).
//
// Read and Write imply Describe. Every name is literal: the agent reaches
// no other node's topics or group, cannot write commands nor read events,
// not even its own, and cannot create or delete anything. On a cluster
// with an authorizer, whatever is not allowed is denied.
func NodeACLs(prefix, node, user string) []ACL {
	t := kafkatransport.TopicsFor(prefix, node)
	g := kafkatransport.GroupsFor(prefix, node)
	p := Principal(user)
	allow := func(resource, name, op string) ACL {
		return ACL{Principal: p, Host: AnyHost, Resource: resource, Name: name, Pattern: PatternLiteral, Operation: op, Permission: PermissionAllow}
	}
	return []ACL{
		allow(ResourceTopic, t.Commands, OperationRead),
		allow(ResourceTopic, t.Events, OperationWrite),
		allow(ResourceGroup, g.Agent, OperationRead),
		allow(ResourceCluster, ClusterName, OperationIdempotentWrite),
	}
}

// MasterACLs returns what the master, connecting as SASL user user, needs
// on a cluster whose topics carry prefix (kafkatransport.DefaultTopicPrefix
// if empty), for a master that is no superuser: on every topic whose name
// starts with prefix, Create, Write, Read and Delete (creating a node's
// topics, writing commands, reading events, purging a node); on every
// consumer group whose name starts with prefix, Read and Delete
// (committing its offsets, purging a node's groups); IdempotentWrite on
// the cluster as in NodeACLs. No ACL or user administration: with Alter on
// the cluster a master could grant itself everything. The embedded broker
// gives its master exactly these. The bindings are prefixed: they cover
// every name that starts with prefix, which is why the configuration
// requires a prefix ending in "." ("conveyor" would cover
// "conveyorX.NODE.commands" of another installation); a prefix still
// covers every longer prefix of its own ("conveyor." covers
// "conveyor.team2."), so installations sharing a cluster need prefixes
// of which none starts with another.
func MasterACLs(prefix, user string) []ACL {
	if prefix == "" {
		prefix = kafkatransport.DefaultTopicPrefix
	}
	p := Principal(user)
	allow := func(resource, name, pattern, op string) ACL {
		return ACL{Principal: p, Host: AnyHost, Resource: resource, Name: name, Pattern: pattern, Operation: op, Permission: PermissionAllow}
	}
	var acls []ACL
	for _, op := range []string{OperationCreate, OperationWrite, OperationRead, OperationDelete} {
		acls = append(acls, allow(ResourceTopic, prefix, PatternPrefixed, op))
	}
	for _, op := range []string{OperationRead, OperationDelete} {
		acls = append(acls, allow(ResourceGroup, prefix, PatternPrefixed, op))
	}
	return append(acls, allow(ResourceCluster, ClusterName, PatternLiteral, OperationIdempotentWrite))
}

// String renders the binding on one line, e.g.
// "User:a Allow Read Topic conveyor.a.commands (Literal) from *".
func (a ACL) String() string {
	return fmt.Sprintf("%s %s %s %s %s (%s) from %s", a.Principal, a.Permission, a.Operation, a.Resource, a.Name, a.Pattern, a.Host)
}

// kmsgACL is an ACL parsed into Kafka's protocol values.
type kmsgACL struct {
	resource   kmsg.ACLResourceType
	pattern    kmsg.ACLResourcePatternType
	operation  kmsg.ACLOperation
	permission kmsg.ACLPermissionType
}

// parse checks the binding and returns its protocol values. Filter values
// (Any, Match) and Unknown are refused: a binding names one thing.
func (a ACL) parse() (kmsgACL, error) {
	var k kmsgACL
	var err error
	bad := func(field, value string) error {
		return fmt.Errorf("acl %q: %s %q is not one Kafka knows for a binding", a.String(), field, value)
	}
	if !strings.HasPrefix(a.Principal, "User:") || len(a.Principal) == len("User:") {
		return k, fmt.Errorf("acl %q: principal %q is not User:NAME", a.String(), a.Principal)
	}
	if a.Host == "" {
		return k, fmt.Errorf("acl %q: empty host (\"*\" is any)", a.String())
	}
	if a.Name == "" {
		return k, fmt.Errorf("acl %q: empty resource name", a.String())
	}
	if k.resource, err = kmsg.ParseACLResourceType(a.Resource); err != nil || k.resource <= kmsg.ACLResourceTypeAny {
		return k, bad("resource", a.Resource)
	}
	if k.pattern, err = kmsg.ParseACLResourcePatternType(a.Pattern); err != nil ||
		(k.pattern != kmsg.ACLResourcePatternTypeLiteral && k.pattern != kmsg.ACLResourcePatternTypePrefixed) {
		return k, bad("pattern", a.Pattern)
	}
	if k.operation, err = kmsg.ParseACLOperation(a.Operation); err != nil || k.operation <= kmsg.ACLOperationAny {
		return k, bad("operation", a.Operation)
	}
	if k.permission, err = kmsg.ParseACLPermissionType(a.Permission); err != nil ||
		(k.permission != kmsg.ACLPermissionTypeAllow && k.permission != kmsg.ACLPermissionTypeDeny) {
		return k, bad("permission", a.Permission)
	}
	if k.resource == kmsg.ACLResourceTypeCluster && a.Name != ClusterName {
		return k, fmt.Errorf("acl %q: the cluster resource is named %q", a.String(), ClusterName)
	}
	return k, nil
}

// Validate reports whether the binding names a valid principal, host,
// resource, pattern, operation and permission.
func (a ACL) Validate() error {
	_, err := a.parse()
	return err
}

// Kfake returns the binding as kfake seeds it (kfake.User). kfake.User
// ignores the principal and binds the ACL to its own user: pass a user
// only the bindings whose Principal is Principal(that user).
func (a ACL) Kfake() (kfake.ACL, error) {
	k, err := a.parse()
	if err != nil {
		return kfake.ACL{}, err
	}
	return kfake.ACL{
		Principal: a.Principal,
		Resource:  k.resource,
		Name:      a.Name,
		Pattern:   k.pattern,
		Operation: k.operation,
		Allow:     k.permission == kmsg.ACLPermissionTypeAllow,
		Host:      a.Host,
	}, nil
}

// SaramaACLs returns the bindings as sarama's admin client takes them
// (sarama.ClusterAdmin.CreateACLs), grouped by resource in the order the
// resources first appear. Note that ClusterAdmin.CreateACLs ignores the
// broker's answer for each binding: ApplyACLs checks it.
func SaramaACLs(acls []ACL) ([]*sarama.ResourceAcls, error) {
	var out []*sarama.ResourceAcls
	index := map[sarama.Resource]*sarama.ResourceAcls{}
	for _, a := range acls {
		k, err := a.parse()
		if err != nil {
			return nil, err
		}
		// kmsg and sarama both number these as the Kafka protocol does.
		r := sarama.Resource{
			ResourceType:        sarama.AclResourceType(k.resource),
			ResourceName:        a.Name,
			ResourcePatternType: sarama.AclResourcePatternType(k.pattern),
		}
		ra := index[r]
		if ra == nil {
			ra = &sarama.ResourceAcls{Resource: r}
			index[r] = ra
			out = append(out, ra)
		}
		ra.Acls = append(ra.Acls, &sarama.Acl{
			Principal:      a.Principal,
			Host:           a.Host,
			Operation:      sarama.AclOperation(k.operation),
			PermissionType: sarama.AclPermissionType(k.permission),
		})
	}
	return out, nil
}

// ApplyACLs creates the bindings on the cluster cfg reaches, connecting as
// cfg's user, who needs Alter on the cluster (a superuser has it). A
// binding that exists already is no error. Every binding the broker
// refuses is reported. It gives up when ctx ends.
func ApplyACLs(ctx context.Context, cfg kafkatransport.Config, acls []ACL) error {
	if len(acls) == 0 {
		return nil
	}
	rs, err := SaramaACLs(acls)
	if err != nil {
		return err
	}
	req := &sarama.CreateAclsRequest{Version: 1} // 1: prefixed patterns
	for _, r := range rs {
		for _, a := range r.Acls {
			req.AclCreations = append(req.AclCreations, &sarama.AclCreation{Resource: r.Resource, Acl: *a})
		}
	}
	sc, err := cfg.Sarama()
	if err != nil {
		return err
	}
	// The client finds the controller through a metadata request naming
	// no topic, which sarama only sends with full metadata (as WithAdmin).
	sc.Metadata.Full = true
	if err := ctx.Err(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() {
		done <- createACLs(cfg.Brokers, sc, req)
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("create kafka ACLs: %w", ctx.Err())
	}
}

// createACLs sends req to the controller and checks every answer.
func createACLs(brokers []string, sc *sarama.Config, req *sarama.CreateAclsRequest) error {
	client, err := sarama.NewClient(brokers, sc)
	if err != nil {
		return fmt.Errorf("create kafka ACLs: connect to %s: %w", strings.Join(brokers, ","), err)
	}
	defer client.Close()
	b, err := client.Controller()
	if err != nil {
		return fmt.Errorf("create kafka ACLs: %w", err)
	}
	resp, err := b.CreateAcls(req)
	if err != nil {
		return fmt.Errorf("create kafka ACLs: %w", err)
	}
	if len(resp.AclCreationResponses) != len(req.AclCreations) {
		return fmt.Errorf("create kafka ACLs: %d answers for %d bindings", len(resp.AclCreationResponses), len(req.AclCreations))
	}
	var errs []error
	for i, r := range resp.AclCreationResponses {
		if r.Err == sarama.ErrNoError {
			continue
		}
		c := req.AclCreations[i]
		msg := r.Err.Error()
		if r.ErrMsg != nil && *r.ErrMsg != "" {
			msg += ": " + *r.ErrMsg
		}
		errs = append(errs, fmt.Errorf("create kafka ACL %s %s %s on %s %s: %s",
			c.Principal, c.PermissionType.String(), c.Operation.String(), c.ResourceType.String(), c.ResourceName, msg))
	}
	return errors.Join(errs...)
}
