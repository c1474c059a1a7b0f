package config

import (
	"cmp"
	"context"
	"encoding/hex"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
)

// nameRE is what launcher, node, job and step names must match. Node names
// become Kafka topic names, hence the conservative alphabet and length.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// The structs below are the gohcl schema of one file. Optional attributes
// that get defaults or checks are pointers (nil when absent, and left nil when
// they fail to decode, so that a type error is not reported a second time).

type fileSchema struct {
	Servers   []*serverBlock   `hcl:"server,block"`
	Launchers []*launcherBlock `hcl:"launcher,block"`
	Nodes     []*nodeBlock     `hcl:"node,block"`
	Jobs      []*jobBlock      `hcl:"job,block"`
}

type serverBlock struct {
	Name          *string   `hcl:"name,optional"`
	NameRange     hcl.Range `hcl:"name,attr_value_range"`
	HTTPAddr      *string   `hcl:"http_addr,optional"`
	HTTPAddrRange hcl.Range `hcl:"http_addr,attr_value_range"`
	DataDir       *string   `hcl:"data_dir,optional"`
	DataDirRange  hcl.Range `hcl:"data_dir,attr_value_range"`
	PluginDir     *string   `hcl:"plugin_dir,optional"`
	LogLevel      *string   `hcl:"log_level,optional"`
	LogLevelRange hcl.Range `hcl:"log_level,attr_value_range"`
	LogJSON       *bool     `hcl:"log_json,optional"`
	API           *apiBlock `hcl:"api,block"`
	DefRange      hcl.Range `hcl:",def_range"`
	dir           string    // directory of the file holding the block
}

type apiBlock struct {
	Token      *string   `hcl:"token,optional"`
	TokenRange hcl.Range `hcl:"token,attr_value_range"`
	PublicRead *bool     `hcl:"public_read,optional"`
}

type launcherBlock struct {
	Name        string    `hcl:"name,label"`
	NameRange   hcl.Range `hcl:"name,label_range"`
	SHA256      *string   `hcl:"sha256,optional"`
	SHA256Range hcl.Range `hcl:"sha256,attr_value_range"`
	MaxLaunches *int      `hcl:"max_concurrent_launches,optional"`
	MaxRange    hcl.Range `hcl:"max_concurrent_launches,attr_value_range"`
	Remain      hcl.Body  `hcl:",remain"`
	DefRange    hcl.Range `hcl:",def_range"`
}

type availabilityBlock struct {
	Mode      *string   `hcl:"mode,optional"`
	ModeRange hcl.Range `hcl:"mode,attr_value_range"`
	Idle      *string   `hcl:"idle_timeout,optional"`
	IdleRange hcl.Range `hcl:"idle_timeout,attr_value_range"`
	DefRange  hcl.Range `hcl:",def_range"`
}

type nodeBlock struct {
	Name           string               `hcl:"name,label"`
	NameRange      hcl.Range            `hcl:"name,label_range"`
	Launcher       string               `hcl:"launcher,attr"`
	LauncherRange  hcl.Range            `hcl:"launcher,attr_value_range"`
	Labels         []string             `hcl:"labels,optional"`
	LabelsRange    hcl.Range            `hcl:"labels,attr_value_range"`
	Executors      *int                 `hcl:"executors,optional"`
	ExecutorsRange hcl.Range            `hcl:"executors,attr_value_range"`
	Heartbeat      *string              `hcl:"heartbeat_timeout,optional"`
	HeartbeatRange hcl.Range            `hcl:"heartbeat_timeout,attr_value_range"`
	Session        *string              `hcl:"session_timeout,optional"`
	SessionRange   hcl.Range            `hcl:"session_timeout,attr_value_range"`
	Write          *string              `hcl:"write_timeout,optional"`
	WriteRange     hcl.Range            `hcl:"write_timeout,attr_value_range"`
	Shell          []string             `hcl:"shell,optional"`
	ShellRange     hcl.Range            `hcl:"shell,attr_value_range"`
	Availability   []*availabilityBlock `hcl:"availability,block"`
	Remain         hcl.Body             `hcl:",remain"`
	DefRange       hcl.Range            `hcl:",def_range"`
}

type jobBlock struct {
	Name         string            `hcl:"name,label"`
	NameRange    hcl.Range         `hcl:"name,label_range"`
	Labels       []string          `hcl:"labels,optional"`
	LabelsRange  hcl.Range         `hcl:"labels,attr_value_range"`
	Timeout      *string           `hcl:"timeout,optional"`
	TimeoutRange hcl.Range         `hcl:"timeout,attr_value_range"`
	Env          map[string]string `hcl:"env,optional"`
	EnvRange     hcl.Range         `hcl:"env,attr_value_range"`
	Artifacts    hcl.Expression    `hcl:"artifacts,optional"`
	MaxMiB       *int              `hcl:"artifacts_max_mib,optional"`
	MaxMiBRange  hcl.Range         `hcl:"artifacts_max_mib,attr_value_range"`
	Shell        []string          `hcl:"shell,optional"`
	ShellRange   hcl.Range         `hcl:"shell,attr_value_range"`
	Params       []*paramBlock     `hcl:"param,block"`
	Steps        []*stepBlock      `hcl:"step,block"`
	DefRange     hcl.Range         `hcl:",def_range"`
}

type paramBlock struct {
	Name         string    `hcl:"name,label"`
	NameRange    hcl.Range `hcl:"name,label_range"`
	Default      *string   `hcl:"default,optional"`
	DefaultRange hcl.Range `hcl:"default,attr_value_range"`
	Description  *string   `hcl:"description,optional"`
	Choices      []string  `hcl:"choices,optional"`
	ChoicesRange hcl.Range `hcl:"choices,attr_value_range"`
	DefRange     hcl.Range `hcl:",def_range"`
}

type stepBlock struct {
	Name       string    `hcl:"name,label"`
	NameRange  hcl.Range `hcl:"name,label_range"`
	Run        string    `hcl:"run"`
	Stdin      *string   `hcl:"stdin,optional"`
	StdinRange hcl.Range `hcl:"stdin,attr_value_range"`
	DefRange   hcl.Range `hcl:",def_range"`
}

// Load parses, decodes and checks the configuration in paths. A path may be a
// file, or a directory whose *.hcl files are loaded in name order; all files
// are merged into one configuration. The returned Config is never nil and
// always has Files set, so diagnostics can be printed even on failure; its
// contents are only complete when the diagnostics have no errors.
//
// Loading is bounded (see MaxConfigFileBytes, MaxNesting, MaxFileFuncBytes
// and MaxFuncOutputBytes): a configuration file or a file() that is not a
// regular file, that is too large, or that nests too deeply gets a
// diagnostic instead of blocking, filling the memory or overflowing the
// stack. No diagnostic quotes a value that file() or env() returned (see
// Redact).
func Load(paths ...string) (*Config, hcl.Diagnostics) {
	return LoadContext(context.Background(), paths...)
}

// LoadContext is Load, returning as soon as ctx ends (say on SIGTERM) with
// an "Interrupted" diagnostic and an empty Config; the abandoned loading
// stops at the next file, and is bounded anyway.
func LoadContext(ctx context.Context, paths ...string) (*Config, hcl.Diagnostics) {
	type result struct {
		c     *Config
		diags hcl.Diagnostics
	}
	done := make(chan result, 1)
	go func() {
		c, diags := load(ctx, paths)
		done <- result{c, diags}
	}()
	select {
	case r := <-done:
		return r.c, r.diags
	case <-ctx.Done():
		return &Config{Files: map[string]*hcl.File{}}, hcl.Diagnostics{interrupted(ctx)}
	}
}

// interrupted is the diagnostic of a load cut short by ctx.
func interrupted(ctx context.Context) *hcl.Diagnostic {
	return &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Interrupted",
		Detail: fmt.Sprintf("Loading the configuration was interrupted: %v.", context.Cause(ctx))}
}

func load(ctx context.Context, paths []string) (*Config, hcl.Diagnostics) {
	c := &Config{Files: map[string]*hcl.File{}, state: &evalState{}}
	files, primary, diags := expandPaths(paths)
	c.dir, c.order = primary, files
	if diags.HasErrors() {
		return c, diags
	}

	parser := hclparse.NewParser()
	c.Files = parser.Files()
	parsed := make([]*hcl.File, len(files))
	var total int64
	for i, name := range files {
		if ctx.Err() != nil {
			return c, hcl.Diagnostics{interrupted(ctx)}
		}
		src, d := readConfigFile(name, &total)
		if d == nil {
			d = checkShape(src, name)
		}
		if d.HasErrors() {
			diags = append(diags, d...)
			continue
		}
		parsed[i], d = parser.ParseHCL(src, name)
		diags = append(diags, d...)
	}
	if diags.HasErrors() {
		return c, sortDiags(diags, files)
	}

	var all fileSchema
	for i, f := range parsed { // all non-nil: a nil file comes with an error
		var fs fileSchema
		diags = append(diags, gohcl.DecodeBody(c.state.track(f.Body), c.fileEvalContext(files[i]), &fs)...)
		for _, s := range fs.Servers {
			s.dir = filepath.Dir(files[i])
		}
		all.Servers = append(all.Servers, fs.Servers...)
		all.Launchers = append(all.Launchers, fs.Launchers...)
		all.Nodes = append(all.Nodes, fs.Nodes...)
		all.Jobs = append(all.Jobs, fs.Jobs...)
	}

	diags = append(diags, c.buildServer(all.Servers)...)
	diags = append(diags, c.buildLaunchers(all.Launchers)...)
	diags = append(diags, c.buildNodes(all.Nodes)...)
	diags = append(diags, c.buildJobs(all.Jobs)...)
	diags = append(diags, c.checkRunnable(all.Jobs)...)
	return c, c.Redact(sortDiags(shellEscapeHints(dropUnknownCascades(diags), c.Files), files))
}

// readConfigFile reads the configuration file name, a regular file of at
// most MaxConfigFileBytes, adding its size to *total, which may not exceed
// MaxConfigBytes.
func readConfigFile(name string, total *int64) ([]byte, hcl.Diagnostics) {
	src, err := readRegular(name, MaxConfigFileBytes)
	if err == nil && *total+int64(len(src)) > MaxConfigBytes {
		err = fmt.Errorf("the configuration files together are larger than the limit of %s", byteSize(MaxConfigBytes))
	}
	if err != nil {
		return nil, hcl.Diagnostics{{
			Severity: hcl.DiagError,
			Summary:  "Failed to read configuration",
			Detail:   fmt.Sprintf("Cannot read %s: %s.", name, err),
			Subject:  &hcl.Range{Filename: name, Start: hcl.InitialPos, End: hcl.InitialPos},
		}}
	}
	*total += int64(len(src))
	return src, nil
}

// expandPaths turns the given paths into the list of files to parse, and
// returns the configuration directory (that of the first path).
func expandPaths(paths []string) ([]string, string, hcl.Diagnostics) {
	var diags hcl.Diagnostics
	if len(paths) == 0 {
		return nil, ".", diags.Append(&hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "No configuration files",
			Detail:   "No configuration file or directory was given.",
		})
	}
	var files []string
	seen := map[string]bool{}
	add := func(name string) {
		if key := filepath.Clean(name); !seen[key] {
			seen[key] = true
			files = append(files, name)
		}
	}
	primary := ""
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			diags = diags.Append(&hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  "Failed to read configuration",
				Detail:   fmt.Sprintf("Cannot read %s: %s.", p, err),
			})
			continue
		}
		if !st.IsDir() {
			if primary == "" {
				primary = filepath.Dir(p)
			}
			add(p)
			continue
		}
		if primary == "" {
			primary = p
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			diags = diags.Append(&hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  "Failed to read configuration directory",
				Detail:   fmt.Sprintf("Cannot list %s: %s.", p, err),
			})
			continue
		}
		n := 0
		for _, e := range entries { // os.ReadDir sorts by name
			if e.Type().IsRegular() && strings.HasSuffix(e.Name(), ".hcl") {
				add(filepath.Join(p, e.Name()))
				n++
			}
		}
		if n == 0 {
			diags = diags.Append(&hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  "No configuration files",
				Detail:   fmt.Sprintf("The directory %s contains no *.hcl files.", p),
			})
		}
	}
	if primary == "" {
		primary = filepath.Dir(paths[0])
	}
	return files, primary, diags
}

// sortDiags orders diagnostics by file (in load order) and position, keeping
// those without a subject first. gohcl decodes attributes in map order, so
// without this the order of several errors would vary between runs.
func sortDiags(diags hcl.Diagnostics, files []string) hcl.Diagnostics {
	order := make(map[string]int, len(files))
	for i, f := range files {
		order[f] = i + 1
	}
	sort.SliceStable(diags, func(i, j int) bool {
		a, b := diags[i].Subject, diags[j].Subject
		switch {
		case a == nil || b == nil:
			return a == nil && b != nil
		case a.Filename != b.Filename:
			return order[a.Filename] < order[b.Filename]
		default:
			return a.Start.Byte < b.Start.Byte
		}
	})
	return diags
}

// dropUnknownCascades removes gohcl's "value must be known" errors. With no
// variables in scope, a value is only unknown when evaluating it failed (say
// env() of an unset variable), and that failure has been reported already.
// It also removes our own checks' errors about such a value (gohcl leaves
// the zero value behind: `timeout = file("fifo")` was also reported as the
// timeout "" not being a duration).
func dropUnknownCascades(diags hcl.Diagnostics) hcl.Diagnostics {
	if !diags.HasErrors() {
		return diags
	}
	isUnknown := func(d *hcl.Diagnostic) bool {
		return d.Summary == "Unsuitable value type" && strings.HasSuffix(d.Detail, "value must be known")
	}
	type at struct {
		file string
		byte int
	}
	failed := map[at]bool{} // where the unknown values' expressions start
	for _, d := range diags {
		if isUnknown(d) && d.Subject != nil {
			failed[at{d.Subject.Filename, d.Subject.Start.Byte}] = true
		}
	}
	out := diags[:0]
	for _, d := range diags {
		_, ours := d.Extra.(ownCheck)
		if isUnknown(d) || (ours && d.Subject != nil && failed[at{d.Subject.Filename, d.Subject.Start.Byte}]) {
			continue
		}
		out = append(out, d)
	}
	return out
}

// ownCheck marks, in hcl.Diagnostic.Extra, the diagnostics of our own checks
// (errorAt), as opposed to hcl's. plain, when set, is the detail without
// the value checked, shown instead of the detail when that value came from
// file() or env() (see plainError and Redact).
type ownCheck struct {
	plain string
}

// plainError is errorAt for a check whose detail quotes the value checked:
// plain says the same without the value.
func plainError(rng hcl.Range, summary, detail, plain string) *hcl.Diagnostic {
	d := errorAt(rng, summary, detail)
	d.Extra = ownCheck{plain: plain}
	return d
}

// errorAt returns an error diagnostic whose subject is rng.
func errorAt(rng hcl.Range, summary, detail string) *hcl.Diagnostic {
	return &hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary, Detail: detail, Subject: rng.Ptr(), Extra: ownCheck{}}
}

// pos formats the start of rng as FILE:LINE for messages.
func pos(rng hcl.Range) string {
	return fmt.Sprintf("%s:%d", rng.Filename, rng.Start.Line)
}

// checkName reports an invalid block name.
func checkName(kind, name string, rng hcl.Range) hcl.Diagnostics {
	if nameRE.MatchString(name) {
		return nil
	}
	return hcl.Diagnostics{errorAt(rng, "Invalid "+kind+" name",
		fmt.Sprintf("The %s name %q is not valid: a name starts with a letter or digit, continues with letters, digits, '.', '_' or '-', and is at most 63 characters long.", kind, name))}
}

// checkDuplicate records name in seen and reports it if already there.
func checkDuplicate(kind, name string, rng hcl.Range, seen map[string]hcl.Range) hcl.Diagnostics {
	if first, ok := seen[name]; ok {
		return hcl.Diagnostics{errorAt(rng, "Duplicate "+kind+" "+fmt.Sprintf("%q", name),
			fmt.Sprintf("A %s named %q was already declared at %s; %s names must be unique.", kind, name, pos(first), kind))}
	}
	seen[name] = rng
	return nil
}

// resolveDir makes a relative directory absolute against base.
func resolveDir(base, dir string) string {
	if !filepath.IsAbs(dir) {
		dir = filepath.Join(base, dir)
	}
	if abs, err := filepath.Abs(dir); err == nil {
		return abs
	}
	return filepath.Clean(dir)
}

func (c *Config) buildServer(blocks []*serverBlock) hcl.Diagnostics {
	var diags hcl.Diagnostics
	s := Server{
		Name:     DefaultServerName,
		HTTPAddr: DefaultHTTPAddr,
		DataDir:  DefaultDataDir,
		LogLevel: DefaultLogLevel,
	}
	base := c.dir
	if len(blocks) > 0 {
		b := blocks[0]
		for _, dup := range blocks[1:] {
			diags = diags.Append(errorAt(dup.DefRange, "Duplicate server block",
				fmt.Sprintf("Only one server block is allowed; the first was declared at %s.", pos(b.DefRange))))
		}
		base = b.dir
		s.DefRange = b.DefRange
		if b.Name != nil {
			s.Name = *b.Name
			if s.Name == "" {
				diags = diags.Append(errorAt(b.NameRange, "Invalid server name", "The server name must not be empty."))
			}
		}
		if b.HTTPAddr != nil {
			s.HTTPAddr = *b.HTTPAddr
			if _, port, err := net.SplitHostPort(s.HTTPAddr); err != nil {
				diags = diags.Append(plainError(b.HTTPAddrRange, "Invalid http_addr",
					fmt.Sprintf("The HTTP address %q is not a host:port pair: %s.", s.HTTPAddr, err),
					"The HTTP address is not a host:port pair."))
			} else if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
				diags = diags.Append(plainError(b.HTTPAddrRange, "Invalid http_addr",
					fmt.Sprintf("The port %q of the HTTP address %q is not a TCP port number (1-65535, or 0 for any free port).", port, s.HTTPAddr),
					"The port of the HTTP address is not a TCP port number (1-65535, or 0 for any free port)."))
			}
		}
		if b.DataDir != nil {
			s.DataDir = *b.DataDir
			if s.DataDir == "" {
				diags = diags.Append(errorAt(b.DataDirRange, "Invalid data_dir", "The data directory must not be empty."))
			}
		}
		if b.PluginDir != nil {
			s.PluginDir = *b.PluginDir
		}
		if b.LogLevel != nil {
			s.LogLevel = *b.LogLevel
			if !slices.Contains(LogLevels, s.LogLevel) {
				diags = diags.Append(plainError(b.LogLevelRange, "Invalid log_level",
					fmt.Sprintf("The log level %q is not one of %s.", s.LogLevel, strings.Join(LogLevels, ", ")),
					fmt.Sprintf("The log level is not one of %s.", strings.Join(LogLevels, ", "))))
			}
		}
		if b.LogJSON != nil {
			s.LogJSON = *b.LogJSON
		}
		if b.API != nil {
			var d hcl.Diagnostics
			s.API, d = buildAPI(b.API)
			diags = append(diags, d...)
		}
	}
	if s.DataDir != "" {
		s.DataDir = resolveDir(base, s.DataDir)
	}
	if s.PluginDir != "" {
		s.PluginDir = resolveDir(base, s.PluginDir)
	}
	c.Server = s
	return diags
}

// buildAPI checks the api block. The token's value is never quoted in a
// diagnostic: it is a secret.
func buildAPI(b *apiBlock) (API, hcl.Diagnostics) {
	var diags hcl.Diagnostics
	var a API
	if b.PublicRead != nil {
		a.PublicRead = *b.PublicRead
	}
	if b.Token == nil || *b.Token == "" {
		// Unset or empty (env("CONVEYOR_TOKEN", "") with the variable
		// unset): the server uses data_dir/api-token.
		return a, diags
	}
	tok := *b.Token
	switch {
	case len(tok) < MinAPITokenLength:
		detail := fmt.Sprintf("The API token is %d characters long; it needs at least %d (32 random bytes in hex, say: openssl rand -hex 32). Leave it empty to have the server generate one into data_dir/api-token.", len(tok), MinAPITokenLength)
		diags = diags.Append(plainError(b.TokenRange, "Invalid api token", detail, detail))
	case strings.IndexFunc(tok, func(r rune) bool { return r <= ' ' || r > '~' }) >= 0:
		const detail = "The API token may only hold printable ASCII characters without spaces: it travels in an HTTP Authorization header."
		diags = diags.Append(plainError(b.TokenRange, "Invalid api token", detail, detail))
	default:
		a.Token = tok
	}
	return a, diags
}

func (c *Config) buildLaunchers(blocks []*launcherBlock) hcl.Diagnostics {
	var diags hcl.Diagnostics
	seen := map[string]hcl.Range{}
	for _, b := range blocks {
		diags = append(diags, checkName("launcher", b.Name, b.NameRange)...)
		diags = append(diags, checkDuplicate("launcher", b.Name, b.DefRange, seen)...)
		l := &Launcher{Name: b.Name, Body: untrack(b.Remain), DefRange: b.DefRange, MaxConcurrentLaunches: DefaultMaxConcurrentLaunches}
		if b.MaxLaunches != nil {
			l.MaxConcurrentLaunches = *b.MaxLaunches
			if l.MaxConcurrentLaunches < 1 || l.MaxConcurrentLaunches > MaxMaxConcurrentLaunches {
				diags = diags.Append(errorAt(b.MaxRange, "Invalid max_concurrent_launches",
					fmt.Sprintf("A launcher launches between 1 and %d nodes at once.", MaxMaxConcurrentLaunches)))
			}
		}
		if b.SHA256 != nil {
			l.SHA256 = strings.ToLower(*b.SHA256)
			if _, err := hex.DecodeString(l.SHA256); err != nil || len(l.SHA256) != 64 {
				diags = diags.Append(errorAt(b.SHA256Range, "Invalid sha256",
					"The sha256 pin must be 64 hexadecimal characters, the SHA-256 digest of the plugin binary."))
			}
		}
		c.Launchers = append(c.Launchers, l)
	}
	return diags
}

func (c *Config) buildNodes(blocks []*nodeBlock) hcl.Diagnostics {
	var diags hcl.Diagnostics
	seen := map[string]hcl.Range{}
	for _, b := range blocks {
		diags = append(diags, checkName("node", b.Name, b.NameRange)...)
		diags = append(diags, checkDuplicate("node", b.Name, b.DefRange, seen)...)
		n := &Node{
			Name:       b.Name,
			Launcher:   b.Launcher,
			Labels:     b.Labels,
			Executors:  DefaultExecutors,
			DefRange:   b.DefRange,
			BlockRange: b.DefRange,
			Body:       &emptyBody{rng: b.DefRange, blockType: b.Launcher},
		}
		diags = append(diags, duration("heartbeat_timeout", b.Heartbeat, b.HeartbeatRange, &n.HeartbeatTimeout)...)
		diags = append(diags, duration("session_timeout", b.Session, b.SessionRange, &n.SessionTimeout)...)
		diags = append(diags, duration("write_timeout", b.Write, b.WriteRange, &n.WriteTimeout)...)
		n.Shell = b.Shell
		diags = append(diags, checkShell(b.Shell, b.ShellRange)...)
		if session := cmp.Or(n.SessionTimeout, DefaultSessionTimeout); n.WriteTimeout > session {
			diags = diags.Append(errorAt(b.WriteRange, "Invalid write_timeout",
				fmt.Sprintf("The write_timeout (%s) must not exceed the node's session_timeout (%s): a write the disk refuses holds the node's builds at most as long as a lost agent.", n.WriteTimeout, session)))
		}
		diags = append(diags, buildAvailability(b.Availability, &n.Availability)...)
		if b.Executors != nil {
			n.Executors = *b.Executors
			if n.Executors < 1 || n.Executors > MaxExecutors {
				diags = diags.Append(errorAt(b.ExecutorsRange, "Invalid executors",
					fmt.Sprintf("A node has between 1 and %d executors.", MaxExecutors)))
			}
		}

		// The only thing allowed in the node besides our attributes is the
		// block named after its own launcher. When the launcher attribute is
		// missing (already reported), tolerate every declared launcher's
		// block so as not to pile up errors.
		schema := &hcl.BodySchema{}
		if b.Launcher == "" && b.LauncherRange.Filename != "" {
			diags = diags.Append(errorAt(b.LauncherRange, "Empty launcher",
				fmt.Sprintf("The node %q needs the name of a declared launcher, not an empty string.", b.Name)))
		}
		switch {
		case b.Launcher != "":
			schema.Blocks = []hcl.BlockHeaderSchema{{Type: b.Launcher}}
			if c.Launcher(b.Launcher) == nil {
				declared := make([]string, 0, len(c.Launchers))
				for _, l := range c.Launchers {
					declared = append(declared, fmt.Sprintf("%q", l.Name))
				}
				detail := fmt.Sprintf("The node %q uses launcher %q, but there is no launcher %q block.", b.Name, b.Launcher, b.Launcher)
				if len(declared) > 0 {
					detail += " Declared launchers: " + strings.Join(declared, ", ") + "."
				}
				diags = diags.Append(plainError(b.LauncherRange, "Undeclared launcher", detail,
					fmt.Sprintf("The node %q uses a launcher that has no launcher block.", b.Name)))
			}
		default:
			for _, l := range c.Launchers {
				schema.Blocks = append(schema.Blocks, hcl.BlockHeaderSchema{Type: l.Name})
			}
		}
		if b.Remain != nil {
			content, d := b.Remain.Content(schema)
			diags = append(diags, d...)
			if content != nil && b.Launcher != "" {
				blocks := content.Blocks.OfType(b.Launcher)
				if len(blocks) > 0 {
					n.Body, n.BlockRange = untrack(blocks[0].Body), blocks[0].DefRange
				}
				for _, dup := range blocks[min(1, len(blocks)):] {
					diags = diags.Append(errorAt(dup.DefRange, fmt.Sprintf("Duplicate %s block", b.Launcher),
						fmt.Sprintf("A node has at most one %s block; the first was declared at %s.", b.Launcher, pos(blocks[0].DefRange))))
				}
			}
		}
		c.Nodes = append(c.Nodes, n)
	}
	return diags
}

func (c *Config) buildJobs(blocks []*jobBlock) hcl.Diagnostics {
	var diags hcl.Diagnostics
	seen := map[string]hcl.Range{}
	for _, b := range blocks {
		diags = append(diags, checkName("job", b.Name, b.NameRange)...)
		diags = append(diags, checkDuplicate("job", b.Name, b.DefRange, seen)...)
		j := &Job{Name: b.Name, Labels: b.Labels, Env: b.Env, Shell: b.Shell, DefRange: b.DefRange}
		diags = append(diags, checkShell(b.Shell, b.ShellRange)...)
		diags = append(diags, duration("timeout", b.Timeout, b.TimeoutRange, &j.Timeout)...)
		for _, k := range slices.Sorted(maps.Keys(b.Env)) {
			if k == "" || strings.ContainsAny(k, "=\x00") {
				diags = diags.Append(plainError(b.EnvRange, "Invalid environment variable name",
					fmt.Sprintf("%q cannot be an environment variable name.", k),
					"A key of env cannot be an environment variable name (it is empty, or holds '=' or a NUL)."))
			}
		}
		if len(b.Steps) == 0 {
			diags = diags.Append(errorAt(b.DefRange, "Job has no steps",
				fmt.Sprintf("The job %q needs at least one step block.", b.Name)))
		}
		var d hcl.Diagnostics
		j.Artifacts, d = c.buildArtifacts(b.Artifacts)
		diags = append(diags, d...)
		j.ArtifactsMaxBytes = DefaultArtifactsMaxMiB << 20
		if b.MaxMiB != nil {
			if *b.MaxMiB < 1 || *b.MaxMiB > MaxArtifactsMaxMiB {
				diags = diags.Append(errorAt(b.MaxMiBRange, "Invalid artifacts_max_mib",
					fmt.Sprintf("The artifacts of a build may take between 1 and %d MiB.", MaxArtifactsMaxMiB)))
			}
			j.ArtifactsMaxBytes = int64(*b.MaxMiB) << 20
		}
		var d2 hcl.Diagnostics
		j.Params, d2 = buildParams(b.Params)
		diags = append(diags, d2...)
		steps := map[string]hcl.Range{}
		for _, s := range b.Steps {
			diags = append(diags, checkName("step", s.Name, s.NameRange)...)
			diags = append(diags, checkDuplicate("step", s.Name, s.DefRange, steps)...)
			if s.Stdin != nil && len(*s.Stdin) > MaxStdin {
				diags = diags.Append(errorAt(s.StdinRange, "Step stdin too large",
					fmt.Sprintf("The step's stdin is %d bytes; at most %d fit (keep large inputs in the workspace and redirect them).", len(*s.Stdin), MaxStdin)))
			}
			j.Steps = append(j.Steps, Step{Name: s.Name, Run: s.Run, Stdin: s.Stdin, DefRange: s.DefRange})
		}
		c.Jobs = append(c.Jobs, j)
	}
	return diags
}

// checkRunnable reports jobs that no node could ever run: a node can run a
// job when its labels, plus its own name, include every label of the job.
func (c *Config) checkRunnable(blocks []*jobBlock) hcl.Diagnostics {
	var diags hcl.Diagnostics
	for _, b := range blocks {
		if c.canRun(b.Labels) {
			continue
		}
		rng := b.LabelsRange
		if b.LabelsRange.Filename == "" {
			rng = b.DefRange
		}
		detail := fmt.Sprintf("No node carries all of the labels %q that job %q requires (a node's labels include its own name).", b.Labels, b.Name)
		if len(c.Nodes) == 0 {
			detail = fmt.Sprintf("The job %q can never run because no node is declared.", b.Name)
		}
		plain := fmt.Sprintf("No node carries all of the labels that job %q requires (a node's labels include its own name).", b.Name)
		if len(c.Nodes) == 0 {
			plain = detail
		}
		diags = diags.Append(plainError(rng, "Job cannot run on any node", detail, plain))
	}
	return diags
}

// canRun reports whether some node carries all labels.
func (c *Config) canRun(labels []string) bool {
	for _, n := range c.Nodes {
		if hasAll(n, labels) {
			return true
		}
	}
	return false
}

// hasAll reports whether n's label set (its labels and its name) includes
// every label.
func hasAll(n *Node, labels []string) bool {
	for _, l := range labels {
		if l != n.Name && !slices.Contains(n.Labels, l) {
			return false
		}
	}
	return true
}

// buildAvailability decodes a node's availability block (at most one)
// into a.
func buildAvailability(blocks []*availabilityBlock, a *Availability) hcl.Diagnostics {
	*a = Availability{Mode: AvailabilityAlways}
	if len(blocks) == 0 {
		return nil
	}
	var diags hcl.Diagnostics
	for _, dup := range blocks[1:] {
		diags = diags.Append(errorAt(dup.DefRange, "Duplicate availability block",
			fmt.Sprintf("A node has at most one availability block; the first was declared at %s.", pos(blocks[0].DefRange))))
	}
	b := blocks[0]
	if b.Mode != nil {
		a.Mode = *b.Mode
		if a.Mode != AvailabilityAlways && a.Mode != AvailabilityOnDemand {
			diags = diags.Append(errorAt(b.ModeRange, "Invalid availability mode",
				fmt.Sprintf("The mode %q is not one of %q (kept online) and %q (launched when builds wait for it, taken offline when idle).", a.Mode, AvailabilityAlways, AvailabilityOnDemand)))
		}
	}
	diags = append(diags, duration("idle_timeout", b.Idle, b.IdleRange, &a.IdleTimeout)...)
	if b.Idle != nil && a.Mode != AvailabilityOnDemand {
		diags = diags.Append(errorAt(b.IdleRange, "Unused idle_timeout",
			fmt.Sprintf("The idle_timeout only applies to mode %q.", AvailabilityOnDemand)))
	}
	if a.Mode == AvailabilityOnDemand && a.IdleTimeout == 0 {
		a.IdleTimeout = DefaultIdleTimeout
	}
	return diags
}

// duration parses the optional positive duration attribute name into d.
func duration(name string, v *string, rng hcl.Range, d *time.Duration) hcl.Diagnostics {
	if v == nil {
		return nil
	}
	parsed, err := time.ParseDuration(*v)
	switch {
	case err != nil:
		return hcl.Diagnostics{plainError(rng, "Invalid "+name,
			fmt.Sprintf("The %s %q is not a duration such as \"90s\", \"30m\" or \"1h30m\": %s.", name, *v, err),
			fmt.Sprintf("The %s is not a duration such as \"90s\", \"30m\" or \"1h30m\".", name))}
	case parsed <= 0:
		return hcl.Diagnostics{plainError(rng, "Invalid "+name,
			fmt.Sprintf("The %s must be positive, not %s.", name, *v),
			fmt.Sprintf("The %s must be positive.", name))}
	}
	*d = parsed
	return nil
}
