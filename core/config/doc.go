// Package config loads and validates the HCL configuration of the Conveyor
// master: the server settings, the launcher plugins to load, the nodes that
// run work through those launchers, and the jobs.
//
// Our own schema is decoded with gohcl. The bodies that belong to launcher
// plugins (the rest of a launcher block, and a node's per-launcher block) are
// kept as hcl.Body and decoded later by DecodePlugins against the hcldec
// specs the plugins report, so that their diagnostics still point at the
// right lines of the user's files.
//
// Loading is bounded, because `conveyor validate` is what people run on a
// file they were sent: configuration files and file() read regular files
// only, of a bounded size (read.go); the tokens of each file are checked for
// nesting, operator chains, list lengths and iteration before it is parsed
// (scan.go); the functions' output is bounded (funcs.go); and no diagnostic
// quotes a value that file() or env() returned (redact.go).
package config
