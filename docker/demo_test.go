package docker

// The Docker demo (docker/) checked without a Docker engine: the compose
// file's structure and every file it references, the server configuration
// through `conveyor validate`, the certificate script's keystore and
// truststore through Go's PKCS12 and TLS code, and the demo's topology run
// natively: the master, a broker with TLS and SCRAM-SHA-512, two Kafka
// agents configured as in the compose file, an SSH agent behind a real
// sshd, and every job of docker/config.hcl.

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"golang.org/x/crypto/ssh"
	"gopkg.in/yaml.v3"
	"software.sslmate.com/src/go-pkcs12"

	"github.com/conveyor-ci/conveyor/core/config"
	"github.com/conveyor-ci/conveyor/core/e2e/cluster"
	"github.com/conveyor-ci/conveyor/core/nodes"
	"github.com/conveyor-ci/conveyor/core/store"
	"github.com/conveyor-ci/conveyor/plugins/ssh-launcher/sshdtest"
	"github.com/conveyor-ci/conveyor/sdk/testenv"
)

// dockerDir is the demo's directory: this package's own.
var dockerDir = "."

// composeFile is the part of the compose specification the demo uses;
// decoding it with known fields only rejects a misspelt key.
type composeFile struct {
	Name     string                     `yaml:"name"`
	Services map[string]*composeService `yaml:"services"`
	Volumes  map[string]any             `yaml:"volumes"`
	// Extensions (x-*) hold the anchors that services refer to.
	Extensions map[string]any `yaml:",inline"`
}

type composeService struct {
	Image       string                      `yaml:"image"`
	Build       *composeBuild               `yaml:"build"`
	Hostname    string                      `yaml:"hostname"`
	Entrypoint  []string                    `yaml:"entrypoint"`
	Command     []string                    `yaml:"command"`
	Environment map[string]string           `yaml:"environment"`
	Volumes     []string                    `yaml:"volumes"`
	Ports       []string                    `yaml:"ports"`
	DependsOn   map[string]composeDependsOn `yaml:"depends_on"`
	Healthcheck *composeHealthcheck         `yaml:"healthcheck"`
	Restart     string                      `yaml:"restart"`
}

type composeBuild struct {
	Context    string `yaml:"context"`
	Dockerfile string `yaml:"dockerfile"`
	Target     string `yaml:"target"`
}

type composeDependsOn struct {
	Condition string `yaml:"condition"`
}

type composeHealthcheck struct {
	Test        []string `yaml:"test"`
	Interval    string   `yaml:"interval"`
	Timeout     string   `yaml:"timeout"`
	Retries     int      `yaml:"retries"`
	StartPeriod string   `yaml:"start_period"`
}

// mount is one entry of a service's volumes.
type mount struct {
	source, target string
	readOnly, bind bool
}

func parseMount(t *testing.T, service, spec string) mount {
	t.Helper()
	parts := strings.Split(spec, ":")
	if len(parts) < 2 || len(parts) > 3 || (len(parts) == 3 && parts[2] != "ro" && parts[2] != "rw") {
		t.Fatalf("service %s: volume %q is not SOURCE:TARGET[:ro|rw]", service, spec)
	}
	m := mount{source: parts[0], target: parts[1], readOnly: len(parts) == 3 && parts[2] == "ro"}
	m.bind = strings.HasPrefix(m.source, ".") || strings.HasPrefix(m.source, "/")
	if !filepath.IsAbs(m.target) {
		t.Fatalf("service %s: volume %q: the target must be absolute", service, spec)
	}
	return m
}

// loadCompose decodes docker/docker-compose.yml strictly.
func loadCompose(t *testing.T) *composeFile {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dockerDir, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	var f composeFile
	if err := dec.Decode(&f); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	for k := range f.Extensions {
		if !strings.HasPrefix(k, "x-") {
			t.Fatalf("docker-compose.yml: unknown top-level key %q", k)
		}
	}
	return &f
}

// dockerfileStages returns a Dockerfile's stage names and the sources of
// its COPY instructions from the build context (not --from a stage),
// with each one's destination.
func dockerfileStages(t *testing.T, path string) (stages []string, copies map[string]string, last string) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Join continuation lines.
	text := strings.ReplaceAll(string(raw), "\\\n", " ")
	copies = map[string]string{}
	from := regexp.MustCompile(`(?i)^FROM\s+\S+(?:\s+AS\s+(\S+))?`)
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if m := from.FindStringSubmatch(line); m != nil {
			last = m[1]
			if m[1] != "" {
				stages = append(stages, m[1])
			}
			continue
		}
		f := strings.Fields(line)
		if len(f) < 3 || !strings.EqualFold(f[0], "COPY") {
			continue
		}
		args := f[1:]
		fromStage := false
		for len(args) > 0 && strings.HasPrefix(args[0], "--") {
			fromStage = fromStage || strings.HasPrefix(args[0], "--from=")
			args = args[1:]
		}
		if fromStage || len(args) < 2 {
			continue
		}
		for _, src := range args[:len(args)-1] {
			copies[src] = args[len(args)-1]
		}
	}
	return stages, copies, last
}

// dockerKafkaNodes are the Kafka nodes of docker/config.hcl, sorted.
func dockerKafkaNodes(cfg *config.Config) []string {
	var out []string
	for _, n := range cfg.Nodes {
		if n.Launcher == "kafka" {
			out = append(out, n.Name)
		}
	}
	sort.Strings(out)
	return out
}

// loadDockerConfig loads docker/config.hcl with the generated files of pki.
func loadDockerConfig(t *testing.T, pki string) *config.Config {
	t.Helper()
	t.Setenv("CONVEYOR_PKI", pki)
	cfg, diags := config.Load(filepath.Join(dockerDir, "config.hcl"))
	if diags.HasErrors() {
		t.Fatalf("docker/config.hcl: %v", diags)
	}
	return cfg
}

// TestDockerCompose checks docker-compose.yml against the compose
// specification (compose-go's loader and schema, as `docker compose
// config` does; and docker compose itself where installed) and against
// the rest of docker/: every build context, Dockerfile, stage,
// COPY source, bind-mounted file and script exists; every port is
// published on 127.0.0.1; every dependency exists, a healthy one has a
// healthcheck, and they have no cycle; every named volume is declared and
// used; each consumer mounts the generated files where the certificate
// script wrote them; and the Kafka agents are the Kafka nodes of
// config.hcl, configured with TLS and SCRAM.
func TestDockerCompose(t *testing.T) {
	f := loadCompose(t)
	if f.Name == "" {
		t.Error("the compose file sets no project name")
	}
	want := []string{"pki", "kafka-format", "kafka", "ssh-agent", "conveyor", "setup", "kafka-1", "kafka-2", "kafka-ui"}
	for _, name := range want {
		if f.Services[name] == nil {
			t.Errorf("no service %s", name)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	usedVolumes := map[string]bool{}
	pkiMounts := map[string]string{} // volume -> target in the pki service
	for _, m := range f.Services["pki"].Volumes {
		mm := parseMount(t, "pki", m)
		pkiMounts[mm.source] = mm.target
	}
	for _, name := range slices.Sorted(maps.Keys(f.Services)) {
		s := f.Services[name]
		if s.Image == "" && s.Build == nil {
			t.Errorf("service %s has neither image nor build", name)
		}
		if s.Image != "" && s.Build == nil && (!strings.Contains(s.Image, ":") || strings.HasSuffix(s.Image, ":latest")) {
			t.Errorf("service %s: image %q is not pinned to a version", name, s.Image)
		}
		// Files a script argument names inside the container: bind mounts
		// and what the service's Dockerfile copies in.
		provided := map[string]bool{}
		if b := s.Build; b != nil {
			ctx := filepath.Join(dockerDir, b.Context)
			if st, err := os.Stat(ctx); err != nil || !st.IsDir() {
				t.Errorf("service %s: build context %s is no directory", name, b.Context)
				continue
			}
			df := filepath.Join(ctx, b.Dockerfile)
			stages, copies, last := dockerfileStages(t, df)
			if b.Target != "" && !slices.Contains(stages, b.Target) {
				t.Errorf("service %s: %s has no stage %q (stages %v)", name, b.Dockerfile, b.Target, stages)
			}
			if b.Target == "" && last != "" && last != "server" {
				t.Logf("service %s builds the last stage of %s, %q", name, b.Dockerfile, last)
			}
			if len(copies) == 0 {
				t.Errorf("service %s: %s copies nothing from the context", name, b.Dockerfile)
			}
			for src, dst := range copies {
				if _, err := os.Stat(filepath.Join(ctx, src)); err != nil {
					t.Errorf("service %s: %s copies %s, which does not exist: %v", name, b.Dockerfile, src, err)
				}
				if strings.HasSuffix(dst, "/") {
					provided[dst+filepath.Base(src)] = true
				} else {
					provided[dst] = true
				}
			}
		}
		for _, p := range s.Ports {
			if !regexp.MustCompile(`^127\.0\.0\.1:\d+:\d+$`).MatchString(p) {
				t.Errorf("service %s publishes %q: want 127.0.0.1:HOST:CONTAINER", name, p)
			}
		}
		for dep, d := range s.DependsOn {
			target := f.Services[dep]
			switch {
			case target == nil:
				t.Errorf("service %s depends on %s, which does not exist", name, dep)
			case d.Condition == "service_healthy" && target.Healthcheck == nil:
				t.Errorf("service %s waits for %s to be healthy, which has no healthcheck", name, dep)
			case !slices.Contains([]string{"service_started", "service_healthy", "service_completed_successfully"}, d.Condition):
				t.Errorf("service %s: depends_on %s: unknown condition %q", name, dep, d.Condition)
			case d.Condition == "service_completed_successfully" && target.Restart != "no":
				t.Errorf("service %s waits for %s to complete, whose restart policy is %q, not \"no\"", name, dep, target.Restart)
			}
		}
		for _, v := range s.Volumes {
			m := parseMount(t, name, v)
			if m.bind {
				if _, err := os.Stat(filepath.Join(dockerDir, m.source)); err != nil {
					t.Errorf("service %s mounts %s, which does not exist: %v", name, m.source, err)
				}
				provided[m.target] = true
				continue
			}
			usedVolumes[m.source] = true
			if _, ok := f.Volumes[m.source]; !ok {
				t.Errorf("service %s mounts volume %s, which is not declared", name, m.source)
			}
			if at, ok := pkiMounts[m.source]; ok && at != m.target {
				t.Errorf("service %s mounts %s at %s, where the pki service wrote it at %s", name, m.source, m.target, at)
			}
		}
		if s.Healthcheck != nil && (len(s.Healthcheck.Test) < 2 || s.Healthcheck.Test[0] != "CMD") {
			t.Errorf("service %s: healthcheck test %q: want [\"CMD\", ...]", name, s.Healthcheck.Test)
		}
		for _, arg := range slices.Concat(s.Entrypoint, s.Command) {
			if strings.HasPrefix(arg, "/") && strings.HasSuffix(arg, ".sh") && !provided[arg] {
				t.Errorf("service %s runs %s, which neither a bind mount nor its Dockerfile provides", name, arg)
			}
		}
	}
	for v := range f.Volumes {
		if !usedVolumes[v] {
			t.Errorf("volume %s is declared but no service mounts it", v)
		}
	}
	if err := dependencyCycle(f); err != nil {
		t.Error(err)
	}
	if img := f.Services["kafka"].Image; !strings.HasPrefix(img, "apache/kafka:") {
		t.Errorf("the broker runs %q, want the official apache/kafka image", img)
	}

	// The agents: one per Kafka node of config.hcl, each with TLS, SCRAM
	// and a file of its own volume for the secret and the password.
	pki := genPKI(t)
	cfg := loadDockerConfig(t, pki)
	kafkaNodes := dockerKafkaNodes(cfg)
	var agents []string
	for _, name := range slices.Sorted(maps.Keys(f.Services)) {
		s := f.Services[name]
		node := s.Environment["CONVEYOR_AGENT_NAME"]
		if node == "" {
			continue
		}
		agents = append(agents, node)
		for _, key := range []string{"BROKERS", "SECRET_FILE", "TLS_CA", "SASL_MECHANISM", "SASL_USER", "SASL_PASSWORD_FILE", "WORKDIR"} {
			if s.Environment["CONVEYOR_AGENT_"+key] == "" {
				t.Errorf("agent %s: CONVEYOR_AGENT_%s is not set", name, key)
			}
		}
		if u := s.Environment["CONVEYOR_AGENT_SASL_USER"]; u != node {
			t.Errorf("agent %s: SASL user %q, want the node's name (setup.sh's ACLs name User:{node})", name, u)
		}
		for _, key := range []string{"SECRET_FILE", "TLS_CA", "SASL_PASSWORD_FILE"} {
			p := s.Environment["CONVEYOR_AGENT_"+key]
			if !mountedBelow(t, name, s, p) {
				t.Errorf("agent %s: CONVEYOR_AGENT_%s=%s is on no volume it mounts", name, key, p)
			}
		}
	}
	if !slices.Equal(agents, kafkaNodes) {
		t.Errorf("Kafka agents %v, want one per Kafka node of config.hcl: %v", agents, kafkaNodes)
	}
	for _, svc := range []string{"pki", "setup"} {
		if got := strings.Fields(f.Services[svc].Environment["KAFKA_NODES"]); !slices.Equal(got, kafkaNodes) {
			t.Errorf("service %s: KAFKA_NODES %v, want %v", svc, got, kafkaNodes)
		}
	}

	// The compose specification's own loader and schema (compose-go, what
	// `docker compose config` runs): it refuses unknown keys, wrong types
	// and dangling references, and sees the services decoded above.
	opts, err := cli.NewProjectOptions([]string{filepath.Join(dockerDir, "docker-compose.yml")}, cli.WithOsEnv)
	if err != nil {
		t.Fatal(err)
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("compose-go: %v", err)
	}
	if project.Name != f.Name || !slices.Equal(slices.Sorted(slices.Values(project.ServiceNames())), slices.Sorted(maps.Keys(f.Services))) {
		t.Errorf("compose-go loads project %q with services %v; decoded %q with %v", project.Name, project.ServiceNames(), f.Name, slices.Sorted(maps.Keys(f.Services)))
	}
	for name, svc := range project.Services {
		for _, p := range svc.Ports {
			if p.HostIP != "127.0.0.1" {
				t.Errorf("compose-go: service %s publishes port %d on %q, want 127.0.0.1", name, p.Target, p.HostIP)
			}
		}
	}

	// Where a compose plugin exists, it has the last word.
	if out, err := exec.Command("docker", "compose", "version").CombinedOutput(); err == nil {
		cmd := exec.Command("docker", "compose", "-f", filepath.Join(dockerDir, "docker-compose.yml"), "config", "-q")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("docker compose config: %v\n%s", err, out)
		}
	} else {
		t.Logf("no docker compose here (%s): checked with compose-go and the structure above", strings.TrimSpace(firstLine(out)))
	}
}

// mountedBelow tells whether path lies on one of s's volumes.
func mountedBelow(t *testing.T, name string, s *composeService, path string) bool {
	for _, v := range s.Volumes {
		if m := parseMount(t, name, v); strings.HasPrefix(path, m.target+"/") {
			return true
		}
	}
	return false
}

// dependencyCycle reports a cycle of depends_on, nil without one.
func dependencyCycle(f *composeFile) error {
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(string, []string) error
	visit = func(n string, path []string) error {
		switch state[n] {
		case 1:
			return fmt.Errorf("depends_on cycle: %s", strings.Join(append(path, n), " -> "))
		case 2:
			return nil
		}
		state[n] = 1
		if s := f.Services[n]; s != nil {
			for _, d := range slices.Sorted(maps.Keys(s.DependsOn)) {
				if err := visit(d, append(path, n)); err != nil {
					return err
				}
			}
		}
		state[n] = 2
		return nil
	}
	for _, n := range slices.Sorted(maps.Keys(f.Services)) {
		if err := visit(n, nil); err != nil {
			return err
		}
	}
	return nil
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	return s
}

// genPKI runs docker/gen-certs.sh into a new directory and returns it.
func genPKI(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pki")
	runGenCerts(t, dir)
	return dir
}

// runGenCerts runs the certificate script into dir; it returns its stderr.
func runGenCerts(t *testing.T, dir string) string {
	t.Helper()
	// gen-certs.sh makes its keys and certificates with these.
	testenv.Command(t, "openssl", "openssl")
	testenv.Command(t, "ssh-keygen", "openssh-client")
	cmd := exec.Command("bash", filepath.Join(dockerDir, "gen-certs.sh"), dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Env = append(os.Environ(), "KAFKA_NODES=kafka-1 kafka-2", "BROKER_HOST=kafka", "SSH_HOST=ssh-agent")
	if err := cmd.Run(); err != nil {
		t.Fatalf("gen-certs.sh: %v\n%s", err, stderr.String())
	}
	return stderr.String()
}

// readSecretFile is a generated file's content, which must not be empty.
func readSecretFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) == 0 {
		t.Fatalf("%s is empty", path)
	}
	return string(b)
}

// opensslJDKTrust tells whether this openssl can mark a PKCS12 truststore's
// certificates as trusted for Java (-jdktrust, OpenSSL 3.2+).
func opensslJDKTrust() bool {
	out, _ := exec.Command("openssl", "pkcs12", "-help").CombinedOutput()
	return bytes.Contains(out, []byte("-jdktrust"))
}

// TestDockerCerts runs the certificate script and checks its output with
// Go's own code: the PKCS12 keystore decodes to the broker's key and
// certificate chain, the truststore to the CA, a TLS handshake over
// loopback (server: the keystore's certificate; client: trusting the
// truststore's CA) succeeds for the broker's name and for 127.0.0.1, and
// so does mutual TLS (the broker's own SSL listeners); the SSH keys parse
// and pair up; a second run keeps every password and key.
func TestDockerCerts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	stderr := runGenCerts(t, dir)

	ks, err := os.ReadFile(filepath.Join(dir, "kafka", "keystore.p12"))
	if err != nil {
		t.Fatal(err)
	}
	key, leaf, chain, err := pkcs12.DecodeChain(ks, readSecretFile(t, filepath.Join(dir, "kafka", "keystore.password")))
	if err != nil {
		t.Fatalf("keystore.p12: %v", err)
	}
	if leaf.Subject.CommonName != "kafka" || !slices.Contains(leaf.DNSNames, "kafka") ||
		!slices.ContainsFunc(leaf.IPAddresses, func(ip net.IP) bool { return ip.Equal(net.IPv4(127, 0, 0, 1)) }) {
		t.Errorf("broker certificate: CN %q, DNS %v, IP %v; want CN kafka, DNS kafka, IP 127.0.0.1", leaf.Subject.CommonName, leaf.DNSNames, leaf.IPAddresses)
	}
	if len(chain) != 1 || !chain[0].IsCA {
		t.Fatalf("keystore.p12 holds %d CA certificates, want the CA", len(chain))
	}

	ts, err := os.ReadFile(filepath.Join(dir, "public", "truststore.p12"))
	if err != nil {
		t.Fatal(err)
	}
	tsPassword := readSecretFile(t, filepath.Join(dir, "public", "truststore.password"))
	var trusted []*x509.Certificate
	if opensslJDKTrust() {
		// The Java trust attribute is there: the truststore decodes as one.
		if trusted, err = pkcs12.DecodeTrustStore(ts, tsPassword); err != nil {
			t.Fatalf("truststore.p12: %v", err)
		}
	} else {
		// openssl before 3.2 cannot set the attribute (the demo's image
		// has 3.5): the script says so, and the store still holds the CA.
		if !strings.Contains(stderr, "-jdktrust") {
			t.Errorf("gen-certs.sh made a truststore without the Java trust attribute and did not say so:\n%s", stderr)
		}
		if _, err := pkcs12.DecodeTrustStore(ts, tsPassword); err == nil {
			t.Errorf("the truststore decodes as a Java truststore although %s cannot mark it", "openssl")
		}
		out, err := exec.Command("openssl", "pkcs12", "-in", filepath.Join(dir, "public", "truststore.p12"), "-nokeys",
			"-passin", "file:"+filepath.Join(dir, "public", "truststore.password")).Output()
		if err != nil {
			t.Fatalf("openssl pkcs12 -in truststore.p12: %v", err)
		}
		trusted = parseCerts(t, out)
		t.Logf("%s: no -jdktrust; checked the truststore's CA through openssl", strings.TrimSpace(firstLine(mustOutput(t, "openssl", "version"))))
	}
	if len(trusted) != 1 || !trusted[0].Equal(chain[0]) {
		t.Fatalf("truststore.p12 holds %d certificates, want the keystore's CA", len(trusted))
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "public", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if pemCerts := parseCerts(t, caPEM); len(pemCerts) != 1 || !pemCerts[0].Equal(trusted[0]) {
		t.Fatal("public/ca.pem is not the truststore's CA")
	}
	roots := x509.NewCertPool()
	roots.AddCert(trusted[0])
	cert := tls.Certificate{Certificate: [][]byte{leaf.Raw, chain[0].Raw}, PrivateKey: key, Leaf: leaf}

	for _, tc := range []struct {
		name, serverName string
		mutual           bool
	}{
		{"broker name", "kafka", false},
		{"loopback", "", false},
		{"mutual TLS", "kafka", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
			cli := &tls.Config{RootCAs: roots, ServerName: tc.serverName, MinVersion: tls.VersionTLS12}
			if tc.mutual {
				srv.ClientAuth, srv.ClientCAs = tls.RequireAndVerifyClientCert, roots
				cli.Certificates = []tls.Certificate{cert}
			}
			if err := handshake(t, srv, cli); err != nil {
				t.Fatal(err)
			}
		})
	}
	// A client that does not trust the demo's CA, or expects another name,
	// is refused: the handshakes above check something.
	t.Run("untrusted", func(t *testing.T) {
		err := handshake(t, &tls.Config{Certificates: []tls.Certificate{cert}}, &tls.Config{RootCAs: x509.NewCertPool(), ServerName: "kafka"})
		if err == nil {
			t.Fatal("a client that does not trust the demo's CA completed the handshake")
		}
		err = handshake(t, &tls.Config{Certificates: []tls.Certificate{cert}}, &tls.Config{RootCAs: roots, ServerName: "zookeeper"})
		if err == nil {
			t.Fatal("a client expecting another host name completed the handshake")
		}
	})

	// SSH: the master's key is the SSH agent's authorized key; known_hosts
	// names the SSH agent's host key.
	signer, err := ssh.ParsePrivateKey([]byte(readSecretFile(t, filepath.Join(dir, "conveyor", "id_ed25519"))))
	if err != nil {
		t.Fatalf("conveyor/id_ed25519: %v", err)
	}
	authorized, _, _, _, err := ssh.ParseAuthorizedKey([]byte(readSecretFile(t, filepath.Join(dir, "ssh-agent", "authorized_keys"))))
	if err != nil || !bytes.Equal(authorized.Marshal(), signer.PublicKey().Marshal()) {
		t.Errorf("ssh-agent/authorized_keys is not the master's key (%v)", err)
	}
	hostKey, err := ssh.ParsePrivateKey([]byte(readSecretFile(t, filepath.Join(dir, "ssh-agent", "ssh_host_ed25519_key"))))
	if err != nil {
		t.Fatalf("ssh-agent/ssh_host_ed25519_key: %v", err)
	}
	_, hosts, known, _, _, err := ssh.ParseKnownHosts([]byte(readSecretFile(t, filepath.Join(dir, "conveyor", "known_hosts"))))
	if err != nil || !slices.Equal(hosts, []string{"ssh-agent"}) || !bytes.Equal(known.Marshal(), hostKey.PublicKey().Marshal()) {
		t.Errorf("conveyor/known_hosts: hosts %v (%v), want ssh-agent with the agent's host key", hosts, err)
	}
	if st, err := os.Stat(filepath.Join(dir, "ssh-agent", "ssh_host_ed25519_key")); err != nil || st.Mode().Perm()&0o077 != 0 {
		t.Errorf("the SSH host key may be read by others (sshd refuses it): %v %v", st.Mode(), err)
	}

	// Java (the broker, the web UI) reads the stores too, where a keytool is
	// at hand: the keystore's key entry, and the truststore's CA where
	// openssl could mark it.
	if keytool, err := exec.LookPath("keytool"); err == nil {
		list := func(store, password string) string {
			out, err := exec.Command(keytool, "-list", "-storetype", "PKCS12", "-keystore", filepath.Join(dir, store),
				"-storepass", readSecretFile(t, filepath.Join(dir, password))).CombinedOutput()
			if err != nil {
				t.Errorf("keytool -list %s: %v\n%s", store, err, out)
			}
			return string(out)
		}
		if out := list("kafka/keystore.p12", "kafka/keystore.password"); !strings.Contains(out, "PrivateKeyEntry") {
			t.Errorf("Java sees no key in the keystore:\n%s", out)
		}
		if out := list("public/truststore.p12", "public/truststore.password"); opensslJDKTrust() && !strings.Contains(out, "trustedCertEntry") {
			t.Errorf("Java sees no trusted certificate in the truststore:\n%s", out)
		}
	} else {
		t.Logf("no keytool here: the stores were read by Go only")
	}

	// A second run changes no password and no key.
	kept := []string{"kafka/keystore.p12", "kafka/keystore.password", "kafka/scram-users", "public/truststore.p12",
		"conveyor/kafka.password", "conveyor/id_ed25519", "kafka-1/kafka.password", "ssh-agent/ssh_host_ed25519_key"}
	before := map[string]string{}
	for _, f := range kept {
		before[f] = readSecretFile(t, filepath.Join(dir, f))
	}
	runGenCerts(t, dir)
	for _, f := range kept {
		if readSecretFile(t, filepath.Join(dir, f)) != before[f] {
			t.Errorf("a second run of gen-certs.sh changed %s", f)
		}
	}
	users := readSecretFile(t, filepath.Join(dir, "kafka", "scram-users"))
	for _, u := range []string{"admin", "conveyor", "kafka-1", "kafka-2"} {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(u) + ` [0-9a-f]{48}$`).MatchString(users) {
			t.Errorf("scram-users has no password for %s", u)
		}
	}
}

// TestDockerKafkaProperties checks the broker configuration kafka.sh
// writes against the certificate script's output and config.hcl: its
// keystore and truststore exist and open with the passwords it names, its
// advertised host is in the broker's certificate, whose subject is a
// superuser (the SSL listeners' principal), as is the master's SASL user;
// every listener has a security protocol, the clients' one is SASL_SSL
// with SCRAM-SHA-512 and the others require client certificates.
func TestDockerKafkaProperties(t *testing.T) {
	pki := genPKI(t)
	cmd := exec.Command("bash", filepath.Join(dockerDir, "kafka.sh"), "properties")
	cmd.Env = append(os.Environ(), "PKI="+pki, "KAFKA_PROPERTIES="+filepath.Join(t.TempDir(), "server.properties"))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kafka.sh properties: %v", err)
	}
	props := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			props[k] = v
		}
	}
	for _, store := range []string{"keystore", "truststore"} {
		if props["ssl."+store+".type"] != "PKCS12" {
			t.Errorf("ssl.%s.type = %q, want PKCS12", store, props["ssl."+store+".type"])
		}
		b, err := os.ReadFile(props["ssl."+store+".location"])
		if err != nil {
			t.Errorf("ssl.%s.location: %v", store, err)
			continue
		}
		pw := props["ssl."+store+".password"]
		if store == "keystore" {
			_, leaf, _, err := pkcs12.DecodeChain(b, pw)
			if err != nil {
				t.Errorf("the keystore does not open with ssl.keystore.password: %v", err)
				continue
			}
			if host := strings.TrimSuffix(strings.TrimPrefix(strings.Split(props["advertised.listeners"], ",")[0], "SASL_SSL://"), ":9092"); leaf.VerifyHostname(host) != nil {
				t.Errorf("the broker advertises %q, which its certificate does not name", host)
			}
			if !slices.Contains(strings.Split(props["super.users"], ";"), "User:CN="+leaf.Subject.CommonName) {
				t.Errorf("super.users %q lacks the broker's SSL principal User:CN=%s", props["super.users"], leaf.Subject.CommonName)
			}
			if props["ssl.key.password"] != pw {
				t.Error("ssl.key.password is not the keystore's password")
			}
		} else if _, err := exec.Command("openssl", "pkcs12", "-in", props["ssl.truststore.location"], "-noout", "-passin", "pass:"+pw).CombinedOutput(); err != nil {
			t.Errorf("the truststore does not open with ssl.truststore.password: %v", err)
		}
	}
	// The master's Kafka user: the username of config.hcl's sasl block.
	var master string
	if raw, err := os.ReadFile(filepath.Join(dockerDir, "config.hcl")); err == nil {
		if m := regexp.MustCompile(`(?s)sasl \{[^}]*username\s*=\s*"([^"]+)"`).FindSubmatch(raw); m != nil {
			master = string(m[1])
		}
	}
	if master == "" || !slices.Contains(strings.Split(props["super.users"], ";"), "User:"+master) {
		t.Errorf("super.users %q lacks the master's SASL user %q", props["super.users"], master)
	}
	protocols := map[string]string{}
	for _, kv := range strings.Split(props["listener.security.protocol.map"], ",") {
		k, v, _ := strings.Cut(kv, ":")
		protocols[k] = v
	}
	for _, l := range strings.Split(props["listeners"], ",") {
		name, _, _ := strings.Cut(l, "://")
		switch p := protocols[name]; p {
		case "SASL_SSL":
			if props["listener.name."+strings.ToLower(name)+".sasl.enabled.mechanisms"] != "SCRAM-SHA-512" {
				t.Errorf("listener %s: SASL mechanisms %q, want SCRAM-SHA-512", name, props["listener.name."+strings.ToLower(name)+".sasl.enabled.mechanisms"])
			}
		case "SSL":
			if props["listener.name."+strings.ToLower(name)+".ssl.client.auth"] != "required" {
				t.Errorf("listener %s speaks SSL without requiring client certificates", name)
			}
		default:
			t.Errorf("listener %s: security protocol %q, want SASL_SSL or SSL", name, p)
		}
	}
	if props["authorizer.class.name"] == "" || props["allow.everyone.if.no.acl.found"] != "false" {
		t.Error("the broker does not enforce ACLs")
	}
}

// TestDockerSSHDConfig: the SSH agent's sshd_config passes `sshd -t` with
// the keys gen-certs.sh wrote, and lets in the user config.hcl's SSH node
// logs in as.
func TestDockerSSHDConfig(t *testing.T) {
	testenv.Command(t, sshdtest.SSHD, "openssh-server")
	if os.Geteuid() == 0 {
		_ = os.MkdirAll("/run/sshd", 0o755) // the privilege separation directory
	}
	pki := genPKI(t)
	raw, err := os.ReadFile(filepath.Join(dockerDir, "sshd_config"))
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "sshd_config")
	if err := os.WriteFile(file, bytes.ReplaceAll(raw, []byte("/pki/"), []byte(pki+"/")), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(sshdtest.SSHD, "-t", "-f", file).CombinedOutput(); err != nil {
		t.Fatalf("sshd -t: %v\n%s", err, out)
	}
	hcl, err := os.ReadFile(filepath.Join(dockerDir, "config.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?s)ssh \{.*?\buser\s*=\s*"([^"]+)"`).FindSubmatch(hcl)
	allow := regexp.MustCompile(`(?m)^AllowUsers\s+(.+)$`).FindSubmatch(raw)
	if m == nil || allow == nil || !slices.Contains(strings.Fields(string(allow[1])), string(m[1])) {
		t.Errorf("sshd_config's AllowUsers does not let in config.hcl's SSH user (%q, %q)", allow, m)
	}
}

// handshake runs a TLS handshake over loopback and one byte each way.
func handshake(t *testing.T, srv, cli *tls.Config) error {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Minute))
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err != nil {
			done <- fmt.Errorf("server: %w", err)
			return
		}
		_, err = c.Write(b)
		done <- err
	}()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Minute}, "tcp", l.Addr().String(), cli)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	if _, err := c.Write([]byte{'x'}); err != nil {
		return err
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil {
		return fmt.Errorf("client: %w", err)
	}
	return <-done
}

func parseCerts(t *testing.T, pemData []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, pemData = pem.Decode(pemData)
		if b == nil {
			return out
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

func mustOutput(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return out
}

// TestDockerConfigValidates: docker/config.hcl passes `conveyor validate`
// with the files of the certificate script, and fails without them (the
// launchers read them); setup.sh's ACL command accepts it.
func TestDockerConfigValidates(t *testing.T) {
	pki := genPKI(t)
	run := func(pkiDir string, args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(bin, "conveyor"), args...)
		cmd.Env = append(os.Environ(), "CONVEYOR_PKI="+pkiDir, "CONVEYOR_DATA_DIR="+t.TempDir())
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	file := filepath.Join(dockerDir, "config.hcl")
	if out, err := run(pki, "validate", file); err != nil || !strings.Contains(out, "configuration is valid") {
		t.Fatalf("conveyor validate docker/config.hcl: %v\n%s", err, out)
	}
	if out, err := run(t.TempDir(), "validate", file); err == nil || !strings.Contains(out, "kafka.password") {
		t.Errorf("conveyor validate passed without the generated files (%v):\n%s", err, out)
	}
	out, err := run(pki, "kafka", "acls", "-principal", "User:{node}", "-config", file, "kafka-1", "kafka-2")
	if err != nil || !strings.Contains(out, "User:kafka-1") || !strings.Contains(out, "conveyor.kafka-2.events") {
		t.Errorf("conveyor kafka acls (setup.sh's, without -apply): %v\n%s", err, out)
	}
}

// dockerJobBlocks returns the source of every job block of docker/config.hcl.
func dockerJobBlocks(t *testing.T) string {
	t.Helper()
	path := filepath.Join(dockerDir, "config.hcl")
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, diags := hclsyntax.ParseConfig(src, path, hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	var b strings.Builder
	for _, blk := range f.Body.(*hclsyntax.Body).Blocks {
		if blk.Type == "job" {
			r := blk.Range()
			b.Write(src[r.Start.Byte:r.End.Byte])
			b.WriteString("\n")
		}
	}
	return b.String()
}

// TestDockerTopology runs the demo's topology natively: the master with
// the node and job blocks of docker/config.hcl (the nodes' transports
// pointed at loopback), the embedded broker with TLS and SCRAM-SHA-512
// users per node and ACLs, using the certificate script's broker
// certificate and passwords, setup.sh handing out the node secrets, the
// two Kafka agents with the settings of their compose services, the SSH
// node through a real sshd that authorizes the script's SSH key; every
// demo job passes, each on the node it names.
func TestDockerTopology(t *testing.T) {
	pki := genPKI(t)
	cfg := loadDockerConfig(t, pki)
	compose := loadCompose(t)
	password := func(rel string) string { return readSecretFile(t, filepath.Join(pki, rel)) }

	srv := sshdtest.Start(t, sshdtest.Options{})
	key, err := ssh.ParsePrivateKey([]byte(password("conveyor/id_ed25519")))
	if err != nil {
		t.Fatal(err)
	}
	srv.AuthorizeKey(key.PublicKey())
	remote := t.TempDir()

	var nodeBlocks strings.Builder
	users := map[string]string{}
	var sshNodes []string
	for _, n := range cfg.Nodes {
		fmt.Fprintf(&nodeBlocks, "node %q {\n  launcher = %q\n  labels = %s\n  executors = %d\n", n.Name, n.Launcher, hclList(n.Labels), n.Executors)
		if n.HeartbeatTimeout > 0 {
			fmt.Fprintf(&nodeBlocks, "  heartbeat_timeout = %q\n", n.HeartbeatTimeout.String())
		}
		if n.SessionTimeout > 0 {
			fmt.Fprintf(&nodeBlocks, "  session_timeout = %q\n", n.SessionTimeout.String())
		}
		switch n.Launcher {
		case "kafka":
			users[n.Name] = password(n.Name + "/kafka.password")
			nodeBlocks.WriteString("  kafka {}\n")
		case "ssh":
			sshNodes = append(sshNodes, n.Name)
			// The script's key; sshd's own address and host key.
			ssh := srv.Node(filepath.Join(remote, n.Name, "conveyor-agent"), filepath.Join(remote, n.Name, "work"))
			ssh.KeyFile = filepath.Join(pki, "conveyor", "id_ed25519")
			nodeBlocks.WriteString(ssh.Block())
		default:
			t.Fatalf("node %s: launcher %q has no native stand-in here", n.Name, n.Launcher)
		}
		nodeBlocks.WriteString("}\n")
	}
	if len(users) != 2 || len(sshNodes) != 1 {
		t.Fatalf("docker/config.hcl has Kafka nodes %v and SSH nodes %v, want two and one", slices.Sorted(maps.Keys(users)), sshNodes)
	}
	var userList []string
	for _, u := range slices.Sorted(maps.Keys(users)) {
		userList = append(userList, fmt.Sprintf("%q = %q", u, users[u]))
	}
	kafka := fmt.Sprintf(`
  tls { ca_file = %s }
  sasl {
    mechanism = "SCRAM-SHA-512"
    username  = "conveyor"
    password  = %q
  }
  embedded {
    tls {
      cert_file = %s
      key_file  = %s
    }
    sasl {
      mechanism = "SCRAM-SHA-512"
      users     = { %s }
    }
    acls = true
  }`, cluster.HCLString(filepath.Join(pki, "public", "ca.pem")), password("conveyor/kafka.password"),
		cluster.HCLString(filepath.Join(pki, "kafka", "broker.pem")), cluster.HCLString(filepath.Join(pki, "kafka", "broker-key.pem")),
		strings.Join(userList, ", "))
	launchers := fmt.Sprintf("launcher \"ssh\" {\n  agent_binary = %s\n}\n", cluster.HCLString(filepath.Join(bin, "conveyor-agent")))
	c := cluster.Start(t, cluster.Options{Bin: bin, Launchers: launchers, Kafka: kafka, Nodes: nodeBlocks.String(), Jobs: dockerJobBlocks(t)})

	// setup.sh, as the compose file runs it, writes each node's secret
	// where the agent's service reads it (the embedded broker sets up the
	// agents' ACLs itself: `conveyor kafka acls` shows they are the same).
	setup := exec.Command("bash", filepath.Join(dockerDir, "setup.sh"))
	setup.Env = append(os.Environ(), "CONVEYOR_ADDR=http://"+c.HTTPAddr,
		"CONVEYOR_TOKEN_FILE="+filepath.Join(c.Dir, "data", "api-token"), "CONVEYOR_PKI="+pki,
		"CONVEYOR_CONFIG="+filepath.Join(c.Dir, "conveyor.hcl"), "KAFKA_NODES="+strings.Join(slices.Sorted(maps.Keys(users)), " "),
		"AGENT_UID=", "KAFKA_ACLS=skip", "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	if out, err := setup.CombinedOutput(); err != nil {
		t.Fatalf("setup.sh: %v\n%s", err, out)
	}

	// The agents take their compose service's settings, with the
	// container's /pki paths mapped to the script's output (the secret
	// file included: the harness's own, given first, holds a wrong
	// secret); the cluster sets the name, brokers and work directory.
	for _, node := range slices.Sorted(maps.Keys(users)) {
		svc := compose.Services[node]
		if svc == nil {
			t.Fatalf("no compose service for node %s", node)
		}
		var args []string
		for _, k := range slices.Sorted(maps.Keys(svc.Environment)) {
			flag, ok := strings.CutPrefix(k, "CONVEYOR_AGENT_")
			if !ok || slices.Contains([]string{"NAME", "BROKERS", "WORKDIR"}, flag) {
				continue
			}
			v := svc.Environment[k]
			if rest, ok := strings.CutPrefix(v, "/pki/"); ok {
				v = filepath.Join(pki, rest)
			}
			args = append(args, "-"+strings.ToLower(strings.ReplaceAll(flag, "_", "-")), v)
		}
		for _, want := range []string{"-secret-file", "-tls-ca", "-sasl-password-file"} {
			if !slices.Contains(args, want) {
				t.Fatalf("agent %s: flags %v lack %s", node, args, want)
			}
		}
		if got := strings.TrimSpace(readSecretFile(t, filepath.Join(pki, node, "secret"))); got != c.Secret(node) {
			t.Fatalf("setup.sh wrote %s's secret %q, the API says %q", node, got, c.Secret(node))
		}
		c.StartAgent(node, strings.Repeat("0", 64), args...)
	}
	names := append(slices.Sorted(maps.Keys(users)), sshNodes...)
	c.WaitOnline(names...)

	// Every job passes; a job whose labels name a node ran there.
	ran := map[string]bool{}
	for _, j := range cfg.Jobs {
		b, log := c.Run(j.Name, nil)
		if b.Status != store.StatusSuccess {
			t.Errorf("demo job %s#%d: %s (%s) on %s:\n%s", j.Name, b.Number, b.Status, b.Reason, b.Node, cluster.Tail(string(log)))
			continue
		}
		ran[b.Node] = true
		for _, l := range j.Labels {
			if slices.Contains(names, l) && b.Node != l {
				t.Errorf("demo job %s ran on %s, want %s", j.Name, b.Node, l)
			}
		}
		t.Logf("%-12s on %-8s %s, %d bytes of log", j.Name, b.Node, b.Status, len(log))
	}
	for _, n := range names {
		if !ran[n] {
			t.Errorf("no demo job ran on node %s", n)
		}
		if st := c.Node(n); st.State != nodes.StateOnline {
			t.Errorf("node %s is %s after the jobs: %s", n, st.State, st.Reason)
		}
	}
}

// hclList is an HCL list of strings.
func hclList(items []string) string {
	quoted := make([]string, len(items))
	for i, s := range items {
		quoted[i] = cluster.HCLString(s)
	}
	return "[" + strings.Join(quoted, ", ") + "]"
}
