// Package version holds the version of the conveyor binaries.
package version

// Version is set at build time with -ldflags "-X .../version.Version=...".
var Version = "0.1.0-dev"
