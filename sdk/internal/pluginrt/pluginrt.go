// Package pluginrt is the plugin machinery shared by every plugin kind of
// the SDK (launchers, provisioners): how a plugin binary serves its gRPC
// services through go-plugin, and how the host starts, watches and kills a
// plugin process. Each kind keeps its own handshake, services and public
// Serve/Start functions; this package is what makes them behave alike.
package pluginrt

import (
	"crypto/sha256"
	"fmt"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
)

// LogLevelEnv carries the host's log level to the plugin.
const LogLevelEnv = "CONVEYOR_PLUGIN_LOG_LEVEL"

// ServeConfig is what one plugin kind hands Serve.
type ServeConfig struct {
	// Handshake is the kind's go-plugin handshake.
	Handshake plugin.HandshakeConfig
	// Plugins builds the plugin sets per protocol version from the
	// plugin's logger (the one whose output the host forwards).
	Plugins func(logger hclog.Logger) map[int]plugin.PluginSet
	// GRPCOptions are added to the gRPC server's options.
	GRPCOptions []grpc.ServerOption
}

// Serve runs a plugin: it builds the logger from LogLevelEnv (JSON on
// stderr, which go-plugin forwards into the host's log), exits when the
// host process is gone, and serves the plugin sets over gRPC until the
// host tells the plugin to stop.
func Serve(cfg ServeConfig) {
	level := hclog.LevelFromString(os.Getenv(LogLevelEnv))
	if level == hclog.NoLevel {
		level = hclog.Info
	}
	logger := hclog.New(&hclog.LoggerOptions{
		Level:      level,
		Output:     os.Stderr,
		JSONFormat: true,
	})
	go watchParent(logger)
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig:  cfg.Handshake,
		VersionedPlugins: cfg.Plugins(logger),
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			opts = append(opts, cfg.GRPCOptions...)
			return grpc.NewServer(opts...)
		},
		Logger: logger.Named("go-plugin"),
	})
}

// watchParent exits the plugin when the host that started it is gone. On
// Linux the host also sets a parent-death signal; this covers the rest
// (and a host that was itself re-parented before it died).
func watchParent(logger hclog.Logger) {
	parent := os.Getppid()
	if parent <= 1 {
		return // already orphaned: plugin.Serve refuses to run without a host anyway
	}
	for range time.Tick(500 * time.Millisecond) {
		if os.Getppid() != parent {
			logger.Warn("host process is gone, exiting")
			os.Exit(1)
		}
	}
}

// LevelName is the name of l's level, as LogLevelEnv carries it.
func LevelName(l hclog.Logger) string {
	switch {
	case l.IsTrace():
		return "trace"
	case l.IsDebug():
		return "debug"
	case l.IsInfo():
		return "info"
	case l.IsWarn():
		return "warn"
	default:
		return "error"
	}
}

// FileSHA256 is the hex SHA-256 of the file at path.
func FileSHA256(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%x", sha256.Sum256(b)), nil
}

// ChecksumError is the error of a plugin binary whose checksum is not the
// pinned one.
func ChecksumError(path string, pinned []byte) error {
	sum, _ := FileSHA256(path)
	return fmt.Errorf("plugin %s: sha256 is %s, config pins %x: refusing to run it", path, sum, pinned)
}
