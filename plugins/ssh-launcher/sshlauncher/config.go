package sshlauncher

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/crypto/ssh"

	"github.com/conveyor-ci/conveyor/plugins/ssh-launcher/hostkey"
	"github.com/conveyor-ci/conveyor/sdk/hclspec"
	"github.com/conveyor-ci/conveyor/sdk/launcher"
)

// Defaults of the node attributes.
const (
	DefaultPort              = 22
	DefaultAgentPath         = "~/.conveyor/conveyor-agent"
	DefaultWorkdirParent     = "~/.conveyor/work"
	DefaultLaunchTimeout     = 60 * time.Second
	DefaultMaxRetries        = 10
	DefaultRetryWait         = 15 * time.Second
	DefaultKeepaliveInterval = 15 * time.Second
	DefaultKnownHostsFile    = "~/.ssh/known_hosts"
	// AgentBinaryName is the agent executable looked up next to the plugin
	// and in PATH when agent_binary is not set.
	AgentBinaryName = "conveyor-agent"
	// TOFUFile is the trust-on-first-use store, under the plugin's data
	// directory.
	TOFUFile = "known_hosts"
)

// hostKeyBlock is the `host_key_verification {}` block.
type hostKeyBlock struct {
	Strategy       *string `json:"strategy"`
	KnownHostsFile *string `json:"known_hosts_file"`
	HostKey        *string `json:"host_key"`
	// RequireApproval (trust_on_first_use): a first key waits for an
	// operator's approval.
	RequireApproval *bool `json:"require_approval"`
}

// common holds the attributes of a node that the global block may default.
// A nil field was not set.
type common struct {
	Port                 *float64          `json:"port"`
	User                 *string           `json:"user"`
	PrivateKeyFile       *string           `json:"private_key_file"`
	PrivateKeyPassphrase *string           `json:"private_key_passphrase"`
	Password             *string           `json:"password"`
	HostKeyVerification  *hostKeyBlock     `json:"host_key_verification"`
	AgentPath            *string           `json:"agent_path"`
	Workdir              *string           `json:"workdir"`
	PrefixCommand        *string           `json:"prefix_command"`
	SuffixCommand        *string           `json:"suffix_command"`
	Env                  map[string]string `json:"env"`
	LaunchTimeout        *string           `json:"launch_timeout"`
	MaxRetries           *float64          `json:"max_retries"`
	RetryWait            *string           `json:"retry_wait"`
	KeepaliveInterval    *string           `json:"keepalive_interval"`
}

// globalConfig is the `launcher "ssh" {}` block.
type globalConfig struct {
	common
	AgentBinary *string `json:"agent_binary"`
}

// nodeConfig is a node's `ssh {}` block.
type nodeConfig struct {
	common
	Host *string `json:"host"`
}

func commonSpec() map[string]*hclspec.Spec {
	return map[string]*hclspec.Spec{
		"port":                   hclspec.NewAttr("port", "number", false),
		"user":                   hclspec.NewAttr("user", "string", false),
		"private_key_file":       hclspec.NewAttr("private_key_file", "string", false),
		"private_key_passphrase": hclspec.NewAttr("private_key_passphrase", "string", false),
		"password":               hclspec.NewAttr("password", "string", false),
		"host_key_verification": hclspec.NewBlock("host_key_verification", false, hclspec.NewObject(map[string]*hclspec.Spec{
			"strategy":         hclspec.NewAttr("strategy", "string", false),
			"known_hosts_file": hclspec.NewAttr("known_hosts_file", "string", false),
			"host_key":         hclspec.NewAttr("host_key", "string", false),
			"require_approval": hclspec.NewAttr("require_approval", "bool", false),
		})),
		"agent_path":         hclspec.NewAttr("agent_path", "string", false),
		"workdir":            hclspec.NewAttr("workdir", "string", false),
		"prefix_command":     hclspec.NewAttr("prefix_command", "string", false),
		"suffix_command":     hclspec.NewAttr("suffix_command", "string", false),
		"env":                hclspec.NewAttr("env", "map(string)", false),
		"launch_timeout":     hclspec.NewAttr("launch_timeout", "string", false),
		"max_retries":        hclspec.NewAttr("max_retries", "number", false),
		"retry_wait":         hclspec.NewAttr("retry_wait", "string", false),
		"keepalive_interval": hclspec.NewAttr("keepalive_interval", "string", false),
	}
}

// schema is the plugin's configuration schema.
func schema() *launcher.Schema {
	global := commonSpec()
	global["agent_binary"] = hclspec.NewAttr("agent_binary", "string", false)
	node := commonSpec()
	node["host"] = hclspec.NewAttr("host", "string", true)
	return &launcher.Schema{Global: hclspec.NewObject(global), Node: hclspec.NewObject(node)}
}

// settings is one node's resolved configuration.
type settings struct {
	Node              string
	Host              string
	Port              int
	User              string
	Signer            ssh.Signer
	Password          string
	Verifier          hostkey.Verifier
	AgentPath         string
	Workdir           string
	PrefixCommand     string
	SuffixCommand     string
	Env               map[string]string
	LaunchTimeout     time.Duration
	MaxRetries        int
	RetryWait         time.Duration
	KeepaliveInterval time.Duration

	// hostKeySource is the configured host key (manual) and hostKeyFile
	// the file the keys come from (known_hosts, trust on first use): what
	// material digests of the verification.
	hostKeySource string
	hostKeyFile   string
}

// Addr is host:port.
func (s *settings) Addr() string { return net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) }

// Description is user@host:port.
func (s *settings) Description() string { return s.User + "@" + s.Addr() }

// errorList collects configuration errors, once each.
type errorList struct {
	errs launcher.ConfigErrors
	seen map[string]bool
}

func (l *errorList) add(node string, msg string, path ...string) {
	key := node + "\x00" + strings.Join(path, ".") + "\x00" + msg
	if l.seen == nil {
		l.seen = map[string]bool{}
	}
	if l.seen[key] {
		return
	}
	l.seen[key] = true
	l.errs = append(l.errs, launcher.ConfigError{Node: node, Path: path, Message: msg})
}

// resolver merges a node's block over the global one. Errors point at the
// block the offending value came from.
type resolver struct {
	host   launcher.Host
	global globalConfig
	node   string
	nc     nodeConfig
	errs   *errorList
	// validateOnly: read files but create nothing.
	validateOnly bool
	logger       hclog.Logger
	// approved are the host key fingerprints the host passed on the
	// launch (launcher.Node.ApprovedKeys).
	approved []string
}

// str returns the node's value of an attribute, else the global one, and
// the node name to blame ("" for the global block).
func str(nodeVal, globalVal *string, node string) (string, bool, string) {
	if nodeVal != nil {
		return *nodeVal, true, node
	}
	if globalVal != nil {
		return *globalVal, true, ""
	}
	return "", false, node
}

func num(nodeVal, globalVal *float64, node string) (float64, bool, string) {
	if nodeVal != nil {
		return *nodeVal, true, node
	}
	if globalVal != nil {
		return *globalVal, true, ""
	}
	return 0, false, node
}

func (r *resolver) duration(nodeVal, globalVal *string, name string, def time.Duration, allowZero bool) time.Duration {
	v, ok, who := str(nodeVal, globalVal, r.node)
	if !ok {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		r.errs.add(who, fmt.Sprintf("%q is not a duration (such as \"30s\" or \"2m\")", v), name)
		return def
	}
	if d < 0 || (d == 0 && !allowZero) {
		r.errs.add(who, fmt.Sprintf("%s must be positive", v), name)
		return def
	}
	return d
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func (r *resolver) resolve() *settings {
	g, n := r.global.common, r.nc.common
	s := &settings{Node: r.node}

	if r.nc.Host == nil || strings.TrimSpace(*r.nc.Host) == "" {
		r.errs.add(r.node, "host must name the machine to connect to", "host")
	} else {
		s.Host = strings.TrimSpace(*r.nc.Host)
		if strings.ContainsAny(s.Host, " /@") {
			r.errs.add(r.node, fmt.Sprintf("%q is not a host name or address (put the user in `user` and the port in `port`)", s.Host), "host")
		}
	}

	s.Port = DefaultPort
	if p, ok, who := num(n.Port, g.Port, r.node); ok {
		if p != math.Trunc(p) || p < 1 || p > 65535 {
			r.errs.add(who, fmt.Sprintf("port %v is not a TCP port (1-65535)", p), "port")
		} else {
			s.Port = int(p)
		}
	}

	if u, ok, who := str(n.User, g.User, r.node); ok {
		if strings.TrimSpace(u) == "" {
			r.errs.add(who, "user must not be empty", "user")
		}
		s.User = u
	} else {
		s.User = localUser()
	}

	r.credentials(s)
	r.hostKey(s)

	agentPath, _, who := str(n.AgentPath, g.AgentPath, r.node)
	if agentPath == "" {
		agentPath = DefaultAgentPath
	}
	if strings.HasSuffix(agentPath, "/") {
		r.errs.add(who, "agent_path must name a file, not a directory", "agent_path")
	}
	s.AgentPath = agentPath
	wd, ok, who := str(n.Workdir, g.Workdir, r.node)
	switch {
	case !ok:
		wd = DefaultWorkdirParent + "/" + r.node
	case wd == "":
		r.errs.add(who, "workdir must not be empty", "workdir")
	case who == "" && ok:
		// A global workdir is the parent of each node's own.
		wd = strings.TrimRight(wd, "/") + "/" + r.node
	}
	s.Workdir = wd
	s.PrefixCommand, _, _ = str(n.PrefixCommand, g.PrefixCommand, r.node)
	s.SuffixCommand, _, _ = str(n.SuffixCommand, g.SuffixCommand, r.node)

	s.Env = map[string]string{}
	for _, layer := range []struct {
		who string
		env map[string]string
	}{{"", g.Env}, {r.node, n.Env}} {
		for k, v := range layer.env {
			if !envName.MatchString(k) {
				r.errs.add(layer.who, fmt.Sprintf("%q is not a valid environment variable name", k), "env")
				continue
			}
			s.Env[k] = v
		}
	}

	s.LaunchTimeout = r.duration(n.LaunchTimeout, g.LaunchTimeout, "launch_timeout", DefaultLaunchTimeout, false)
	s.RetryWait = r.duration(n.RetryWait, g.RetryWait, "retry_wait", DefaultRetryWait, true)
	s.KeepaliveInterval = r.duration(n.KeepaliveInterval, g.KeepaliveInterval, "keepalive_interval", DefaultKeepaliveInterval, true)
	s.MaxRetries = DefaultMaxRetries
	if m, ok, who := num(n.MaxRetries, g.MaxRetries, r.node); ok {
		if m != math.Trunc(m) || m < 0 || m > 1e6 {
			r.errs.add(who, fmt.Sprintf("max_retries %v must be a whole number, 0 or more", m), "max_retries")
		} else {
			s.MaxRetries = int(m)
		}
	}
	return s
}

func (r *resolver) credentials(s *settings) {
	g, n := r.global.common, r.nc.common
	keyFile, hasKey, keyWho := str(n.PrivateKeyFile, g.PrivateKeyFile, r.node)
	pass, hasPass, passWho := str(n.PrivateKeyPassphrase, g.PrivateKeyPassphrase, r.node)
	pw, hasPw, _ := str(n.Password, g.Password, r.node)
	if hasPw {
		s.Password = pw
	}
	if !hasKey && (!hasPw || pw == "") {
		r.errs.add(r.node, "no credentials: set private_key_file (and private_key_passphrase if it is encrypted) or password", "private_key_file")
		return
	}
	if !hasKey {
		if hasPass {
			r.errs.add(passWho, "private_key_passphrase is set but private_key_file is not", "private_key_passphrase")
		}
		return
	}
	path := expandLocal(keyFile)
	pem, err := os.ReadFile(path)
	if err != nil {
		r.errs.add(keyWho, fmt.Sprintf("cannot read private key: %v", err), "private_key_file")
		return
	}
	var signer ssh.Signer
	if hasPass {
		signer, err = ssh.ParsePrivateKeyWithPassphrase(pem, []byte(pass))
		if err != nil && strings.Contains(err.Error(), "not encrypted") {
			signer, err = ssh.ParsePrivateKey(pem)
		}
		if err != nil {
			r.errs.add(passWho, fmt.Sprintf("cannot decrypt %s with private_key_passphrase: %v", path, err), "private_key_passphrase")
			return
		}
	} else {
		signer, err = ssh.ParsePrivateKey(pem)
		var missing *ssh.PassphraseMissingError
		if errors.As(err, &missing) {
			r.errs.add(keyWho, fmt.Sprintf("%s is encrypted: set private_key_passphrase (with env() or file())", path), "private_key_passphrase")
			return
		}
		if err != nil {
			r.errs.add(keyWho, fmt.Sprintf("%s is not a private key: %v", path, err), "private_key_file")
			return
		}
	}
	s.Signer = signer
}

func (r *resolver) hostKey(s *settings) {
	hk, who := r.nc.HostKeyVerification, r.node
	if hk == nil {
		hk, who = r.global.HostKeyVerification, ""
	}
	if hk == nil {
		hk = &hostKeyBlock{}
	}
	path := func(attr string) []string { return []string{"host_key_verification", attr} }
	strategy := hostkey.KnownHosts
	switch {
	case hk.Strategy != nil:
		strategy = *hk.Strategy
	case hk.HostKey != nil:
		strategy = hostkey.Manual
	}
	if !slices.Contains(hostkey.Strategies, strategy) {
		r.errs.add(who, fmt.Sprintf("unknown strategy %q (want one of %s)", strategy, strings.Join(hostkey.Strategies, ", ")), path("strategy")...)
		return
	}
	if hk.HostKey != nil && strategy != hostkey.Manual {
		r.errs.add(who, fmt.Sprintf("host_key is only used with strategy %q", hostkey.Manual), path("host_key")...)
	}
	approval := hk.RequireApproval != nil && *hk.RequireApproval
	if hk.RequireApproval != nil && strategy != hostkey.TrustOnFirstUse {
		r.errs.add(who, fmt.Sprintf("require_approval is only used with strategy %q", hostkey.TrustOnFirstUse), path("require_approval")...)
	}
	if hk.KnownHostsFile != nil && strategy != hostkey.KnownHosts {
		r.errs.add(who, fmt.Sprintf("known_hosts_file is only used with strategy %q", hostkey.KnownHosts), path("known_hosts_file")...)
	}
	var err error
	switch strategy {
	case hostkey.KnownHosts:
		file := DefaultKnownHostsFile
		if hk.KnownHostsFile != nil {
			file = *hk.KnownHostsFile
		}
		s.hostKeyFile = expandLocal(file)
		s.Verifier, err = hostkey.NewKnownHosts(s.hostKeyFile)
		if err != nil {
			r.errs.add(who, err.Error(), path("known_hosts_file")...)
		}
	case hostkey.Manual:
		if hk.HostKey == nil {
			r.errs.add(who, `strategy "manual" needs host_key = "ALGORITHM BASE64" (as in the server's /etc/ssh/ssh_host_*_key.pub)`, path("host_key")...)
			return
		}
		key, err := hostkey.ParseKey(*hk.HostKey)
		if err != nil {
			r.errs.add(who, err.Error(), path("host_key")...)
			return
		}
		s.Verifier = hostkey.NewManual(key)
		s.hostKeySource = *hk.HostKey
	case hostkey.TrustOnFirstUse:
		if r.host.DataDir == "" {
			r.errs.add(who, "trust_on_first_use needs the plugin's data directory, and the host gave none", path("strategy")...)
			return
		}
		if r.validateOnly {
			return
		}
		s.hostKeyFile = filepath.Join(r.host.DataDir, TOFUFile)
		if approval {
			s.Verifier, err = hostkey.NewApprovedFirstUse(s.hostKeyFile, r.approved)
			s.hostKeySource = "approved: " + strings.Join(r.approved, ",")
		} else {
			s.Verifier, err = hostkey.NewTrustOnFirstUse(s.hostKeyFile)
		}
		if err != nil {
			r.errs.add(who, err.Error(), path("strategy")...)
		}
	case hostkey.None:
		s.Verifier = hostkey.NewNone(r.logger)
	}
}

// agentBinary finds the local agent executable and its platform.
func agentBinary(g globalConfig) (string, Platform, *launcher.ConfigError) {
	bad := func(msg string) *launcher.ConfigError {
		return &launcher.ConfigError{Path: []string{"agent_binary"}, Message: msg}
	}
	var file string
	if g.AgentBinary != nil {
		file = expandLocal(*g.AgentBinary)
		if file == "" {
			return "", Platform{}, bad("agent_binary must not be empty")
		}
	} else {
		var tried []string
		if exe, err := os.Executable(); err == nil {
			cand := filepath.Join(filepath.Dir(exe), AgentBinaryName)
			tried = append(tried, cand)
			if st, err := os.Stat(cand); err == nil && st.Mode().IsRegular() {
				file = cand
			}
		}
		if file == "" {
			if p, err := exec.LookPath(AgentBinaryName); err == nil {
				file = p
			}
			tried = append(tried, "PATH")
		}
		if file == "" {
			return "", Platform{}, bad(fmt.Sprintf("%s not found (looked in %s): set agent_binary to the agent executable to upload", AgentBinaryName, strings.Join(tried, ", ")))
		}
	}
	p, err := BinaryPlatform(file)
	if err != nil {
		return "", Platform{}, bad(err.Error())
	}
	return file, p, nil
}

// expandLocal expands a leading ~ to the plugin user's home directory.
func expandLocal(p string) string {
	if p == "~" || strings.HasPrefix(p, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, strings.TrimPrefix(p, "~"))
		}
	}
	return p
}

// expandRemote makes p absolute on a remote host whose home is home: a
// leading ~ is the home directory, and a relative path is relative to it.
func expandRemote(p, home string) string {
	switch {
	case p == "~":
		if home != "/" {
			return strings.TrimRight(home, "/")
		}
		return home
	case strings.HasPrefix(p, "~/"):
		return strings.TrimRight(home, "/") + "/" + strings.TrimPrefix(p, "~/")
	case strings.HasPrefix(p, "/"):
		return p
	}
	return strings.TrimRight(home, "/") + "/" + p
}

func localUser() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	if u := os.Getenv("USER"); u != "" {
		return u
	}
	return "root"
}

// material digests what decides whether a refused launch could succeed
// now: the address and user, the credentials, the host key strategy and
// what it checks against (the known_hosts or trust-on-first-use file's
// contents, the configured key). Key and known_hosts files are read again
// on every launch, so an edit to one changes it.
func (s *settings) material() [32]byte {
	h := sha256.New()
	put := func(b []byte) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	put([]byte(s.User))
	put([]byte(s.Addr()))
	put([]byte(s.Password))
	if s.Signer != nil {
		put(s.Signer.PublicKey().Marshal())
	} else {
		put(nil)
	}
	if s.Verifier != nil {
		put([]byte(s.Verifier.Strategy()))
	} else {
		put(nil)
	}
	put([]byte(s.hostKeySource))
	if s.hostKeyFile != "" {
		b, _ := os.ReadFile(s.hostKeyFile)
		put(b)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}
