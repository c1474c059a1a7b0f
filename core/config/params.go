package config

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// Param is a param block of a job: a build parameter that whoever triggers
// a build may set, and that reaches the steps as an environment variable.
// Only declared parameters are accepted at trigger time.
type Param struct {
	// Name is the block label and the environment variable's name; it
	// matches ParamNameRE and is not reserved (see ReservedParam).
	Name string
	// Default is the value used when a trigger does not set the
	// parameter; nil makes the parameter required.
	Default *string
	// Description says what the parameter is for, for people (the UI's
	// trigger form shows it).
	Description string
	// Choices, when set, are the only values accepted.
	Choices []string
	// DefRange is the range of the block header.
	DefRange hcl.Range
}

// ParamNameRE is what a parameter's name must match: an upper-case
// environment variable name.
var ParamNameRE = regexp.MustCompile(`^[A-Z_][A-Z0-9_]*$`)

// MaxParamValue is the longest value a build parameter may have, in bytes.
const MaxParamValue = 32 << 10

// reservedParams are the names no parameter may take, each with the reason:
// the shell, the dynamic loader, the C library, an interpreter, git or the
// agent reads them, so whoever sets them chooses what the step runs (or
// where its traffic goes) rather than what it works on. Lower-case names
// (http_proxy) cannot be declared at all (ParamNameRE). TZ stays allowed:
// the C library reads a zone file from it, no code, and a build's time
// zone is a fair thing to choose.
var reservedParams = map[string]string{
	"PATH":             "the shell looks commands up in it",
	"HOME":             "the shell expands ~ to it and tools read their configuration (.gitconfig, .ssh, .npmrc) from it",
	"SHELL":            "tools that start a shell run the program it names",
	"ENV":              "sh and bash in POSIX mode run the file it names at start",
	"BASH_ENV":         "bash runs the file it names before a non-interactive script",
	"SHELLOPTS":        "bash takes its options from it at start",
	"BASHOPTS":         "bash takes its options from it at start",
	"IFS":              "the shell splits words on it",
	"PS4":              "bash expands it, command substitutions included, before every traced command",
	"PROMPT_COMMAND":   "bash runs it before each prompt",
	"CDPATH":           "it changes where cd goes",
	"GLOBIGNORE":       "it changes what globs match",
	"GCONV_PATH":       "the C library loads character-set modules from it",
	"GLIBC_TUNABLES":   "it tunes the C library's allocator and loader",
	"LOCPATH":          "the C library loads locale data from it",
	"NLSPATH":          "the C library loads message catalogues from it",
	"HOSTALIASES":      "the resolver reads host aliases from the file it names",
	"RESOLV_HOST_CONF": "the resolver reads its configuration from the file it names",
	"TMPDIR":           "tools write and then run scripts and build files in the directory it names",

	"NODE_OPTIONS":      "node takes options from it, --require of any module included",
	"NODE_PATH":         "node loads modules from the directories it names",
	"PYTHONPATH":        "python imports modules from the directories it names first",
	"PYTHONSTARTUP":     "python runs the file it names at an interactive start",
	"PYTHONHOME":        "python loads its standard library from it",
	"PERL5OPT":          "perl takes options from it, -M of any module included",
	"PERL5LIB":          "perl loads modules from the directories it names first",
	"PERLLIB":           "perl loads modules from the directories it names first",
	"RUBYOPT":           "ruby takes options from it, -r of any library included",
	"RUBYLIB":           "ruby loads libraries from the directories it names first",
	"JAVA_TOOL_OPTIONS": "the JVM takes options from it, -javaagent included",
	"_JAVA_OPTIONS":     "the JVM takes options from it, -javaagent included",
	"JDK_JAVA_OPTIONS":  "the java launcher takes options from it, -javaagent included",
	"CLASSPATH":         "java loads classes from it",

	"GIT_SSH_COMMAND":   "git runs it to reach an ssh remote",
	"GIT_SSH":           "git runs the program it names to reach an ssh remote",
	"GIT_PROXY_COMMAND": "git runs it to reach a git:// remote",
	"GIT_EXEC_PATH":     "git runs its sub-commands from the directory it names",
	"GIT_EXTERNAL_DIFF": "git runs the program it names to show differences",
	"GIT_TEMPLATE_DIR":  "git copies hooks from it into every repository it creates or clones, then runs them",
	"GIT_CONFIG":        "git config reads the file it names",
	"GIT_ASKPASS":       "git runs the program it names to ask for credentials",
	"SSH_ASKPASS":       "ssh runs the program it names to ask for credentials",

	"HTTP_PROXY":  "tools send their HTTP traffic, credentials included, through the host it names",
	"HTTPS_PROXY": "tools send their HTTPS traffic through the host it names",
	"ALL_PROXY":   "tools send their traffic through the host it names",
	"NO_PROXY":    "it chooses which hosts tools reach past the configured proxy",
}

// reservedPrefixes are the name prefixes no parameter may take.
var reservedPrefixes = map[string]string{
	"LD_":         "the dynamic loader reads LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT and others",
	"DYLD_":       "the macOS dynamic loader reads them",
	"BASH_FUNC_":  "bash imports exported functions from them",
	"CONVEYOR_":   "the agent reads its settings from them and the master sets the build's facts in them",
	"GIT_CONFIG_": "git reads configuration from them (GIT_CONFIG_COUNT/KEY_n/VALUE_n, GIT_CONFIG_GLOBAL, GIT_CONFIG_PARAMETERS), core.sshCommand and core.fsmonitor included, which it runs",
}

// ReservedParam returns why name cannot be a parameter's name, or "" when
// it can.
func ReservedParam(name string) string {
	if why, ok := reservedParams[name]; ok {
		return why
	}
	for _, p := range slices.Sorted(maps.Keys(reservedPrefixes)) {
		if strings.HasPrefix(name, p) {
			return reservedPrefixes[p]
		}
	}
	return ""
}

// buildParams checks a job's param blocks.
func buildParams(blocks []*paramBlock) ([]Param, hcl.Diagnostics) {
	var diags hcl.Diagnostics
	var out []Param
	seen := map[string]hcl.Range{}
	for _, b := range blocks {
		switch {
		case !ParamNameRE.MatchString(b.Name):
			diags = diags.Append(errorAt(b.NameRange, "Invalid parameter name",
				fmt.Sprintf("%q is no parameter name: use upper-case letters, digits and _, not starting with a digit (%s).", b.Name, ParamNameRE)))
		case ReservedParam(b.Name) != "":
			diags = diags.Append(errorAt(b.NameRange, "Reserved parameter name",
				fmt.Sprintf("%s cannot be a parameter: %s, so whoever triggers a build would choose what the steps run. Pick another name.", b.Name, ReservedParam(b.Name))))
		}
		diags = append(diags, checkDuplicate("param", b.Name, b.DefRange, seen)...)
		p := Param{Name: b.Name, Default: b.Default, Choices: b.Choices, DefRange: b.DefRange}
		if b.Description != nil {
			p.Description = *b.Description
		}
		if b.ChoicesRange.Filename != "" && len(b.Choices) == 0 {
			diags = diags.Append(errorAt(b.ChoicesRange, "Empty choices",
				fmt.Sprintf("The parameter %s lists no choice: give at least one, or remove choices to accept any value.", b.Name)))
		}
		for i, c := range b.Choices {
			if slices.Contains(b.Choices[:i], c) {
				diags = diags.Append(errorAt(b.ChoicesRange, "Duplicate choice",
					fmt.Sprintf("The parameter %s lists %q twice.", b.Name, c)))
			}
			if err := checkParamValue(c); err != nil {
				diags = diags.Append(errorAt(b.ChoicesRange, "Invalid choice", fmt.Sprintf("The parameter %s: %s.", b.Name, err)))
			}
		}
		if b.Default != nil {
			if err := checkParamValue(*b.Default); err != nil {
				diags = diags.Append(errorAt(b.DefaultRange, "Invalid default", fmt.Sprintf("The parameter %s: %s.", b.Name, err)))
			} else if len(b.Choices) > 0 && !slices.Contains(b.Choices, *b.Default) {
				diags = diags.Append(errorAt(b.DefaultRange, "Default not among the choices",
					fmt.Sprintf("The default %q of parameter %s is not one of its choices %q.", *b.Default, b.Name, b.Choices)))
			}
		}
		out = append(out, p)
	}
	return out, diags
}

// checkParamValue reports a value no environment variable can hold, or one
// too long.
func checkParamValue(v string) error {
	switch {
	case strings.ContainsRune(v, 0):
		return fmt.Errorf("a value cannot hold a NUL byte")
	case len(v) > MaxParamValue:
		return fmt.Errorf("a value is at most %d bytes, not %d", MaxParamValue, len(v))
	}
	return nil
}

// Param returns the job's parameter named name, or nil.
func (j *Job) Param(name string) *Param {
	for i := range j.Params {
		if j.Params[i].Name == name {
			return &j.Params[i]
		}
	}
	return nil
}

// ParamError is a trigger's parameters refused: every problem found, for
// the one who triggered.
type ParamError struct {
	// Job is the job triggered.
	Job string
	// Problems says what is wrong, one parameter each, in name order.
	Problems []string
}

// Error implements error.
func (e *ParamError) Error() string {
	return fmt.Sprintf("job %s refuses these parameters: %s", e.Job, strings.Join(e.Problems, "; "))
}

// ResolveParams checks the parameters of a trigger against the job's
// declarations and returns them with the defaults applied: an undeclared
// name, a value outside the choices, a value no environment can hold or a
// required parameter left out is a *ParamError. The result is nil when the
// job has no parameter.
func (j *Job) ResolveParams(given map[string]string) (map[string]string, error) {
	var problems []string
	out := map[string]string{}
	for _, name := range slices.Sorted(maps.Keys(given)) {
		v := given[name]
		p := j.Param(name)
		if p == nil {
			problems = append(problems, undeclared(j, name))
			continue
		}
		if err := checkParamValue(v); err != nil {
			problems = append(problems, fmt.Sprintf("%s: %s", name, err))
			continue
		}
		if len(p.Choices) > 0 && !slices.Contains(p.Choices, v) {
			problems = append(problems, fmt.Sprintf("%s=%q is not one of the choices %q", name, v, p.Choices))
			continue
		}
		out[name] = v
	}
	for _, p := range j.Params {
		if _, ok := given[p.Name]; ok {
			continue
		}
		if p.Default == nil {
			problems = append(problems, fmt.Sprintf("%s is required (it has no default)", p.Name))
			continue
		}
		out[p.Name] = *p.Default
	}
	if len(problems) > 0 {
		return nil, &ParamError{Job: j.Name, Problems: problems}
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// undeclared says why name is refused and which names the job takes.
func undeclared(j *Job, name string) string {
	var what string
	switch {
	case !ParamNameRE.MatchString(name):
		what = fmt.Sprintf("%q is no parameter name (%s) and is not declared", name, ParamNameRE)
	default:
		what = fmt.Sprintf("%s is not a parameter of the job", name)
	}
	if len(j.Params) == 0 {
		return what + " (it declares none: add a param block to the job to take one)"
	}
	names := make([]string, len(j.Params))
	for i, p := range j.Params {
		names[i] = p.Name
	}
	return what + " (it declares " + strings.Join(names, ", ") + ")"
}
