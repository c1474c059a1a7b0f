// Package config loads and validates the HCL configuration of the Conveyor
// master: the server settings, the launcher plugins to load, the nodes that
// run work through those launchers, and the jobs.
//
// Our own schema is decoded with gohcl. The bodies that belong to launcher
// plugins (the rest of a launcher block, and a node's per-launcher block) are
// kept as hcl.Body and decoded later by DecodePlugins against the hcldec
// specs the plugins report, so that their diagnostics still point at the
// right lines of the user's files.
package config
