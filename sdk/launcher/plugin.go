package launcher

import (
	"context"
	"errors"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/mem"

	pb "github.com/conveyor-ci/conveyor/sdk/launcher/proto"
)

// Plugin names in a go-plugin plugin set.
const (
	launcherPluginName = "launcher"
	secretsPluginName  = "secrets"
)

// Protocol versions. Version 1 carries the Launcher service only; version 2
// adds the SecretManager service. Hosts accept every listed version, so a
// current host loads plugins built against an older SDK.
const (
	ProtocolV1 = 1
	ProtocolV2 = 2
	// ProtocolLatest is the newest protocol this SDK speaks.
	ProtocolLatest = ProtocolV2
)

// Handshake is the go-plugin handshake shared by the host and plugins.
// The magic cookie only keeps people from running a plugin binary by hand;
// it is not a security measure.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  ProtocolV1,
	MagicCookieKey:   "CONVEYOR_LAUNCHER_PLUGIN",
	MagicCookieValue: "5d3b0c1e8f7a4e2b9c6d1a0f3e8b7c2d",
}

// maxMessageSize bounds one gRPC message: large enough for the largest wire
// frame plus framing.
const maxMessageSize = 64 << 20

// Transport of the plugin's gRPC connection, the same on both ends: frames
// stream through it at the agent's output rate, so it moves them in large
// reads and writes and lets a batch of frames (maxBatchBytes) and more be
// in flight without waiting for a window update.
const (
	windowSize   = 8 << 20
	ioBufferSize = 256 << 10
)

// bufferPool has a tier at every power of two from 32 KiB to 2 MiB: gRPC
// clears a pooled buffer's whole capacity each time it hands it out, and
// with its default tiers (32 KiB, then 1 MiB) a batch of two 31 KiB frames
// would clear 1 MiB.
var bufferPool = func() mem.BufferPool {
	p, err := mem.NewBinaryTieredBufferPool(8, 12, 14, 15, 16, 17, 18, 19, 20, 21)
	if err != nil {
		panic(err)
	}
	return p
}()

// dialOptions are the host's options for the plugin's gRPC connection.
func dialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessageSize), grpc.MaxCallSendMsgSize(maxMessageSize)),
		grpc.WithInitialWindowSize(windowSize),
		grpc.WithInitialConnWindowSize(windowSize),
		grpc.WithReadBufferSize(ioBufferSize),
		grpc.WithWriteBufferSize(ioBufferSize),
		experimental.WithBufferPool(bufferPool),
	}
}

// serverOptions are the plugin's options for its gRPC server.
func serverOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(maxMessageSize),
		grpc.MaxSendMsgSize(maxMessageSize),
		grpc.InitialWindowSize(windowSize),
		grpc.InitialConnWindowSize(windowSize),
		grpc.ReadBufferSize(ioBufferSize),
		grpc.WriteBufferSize(ioBufferSize),
		experimental.BufferPool(bufferPool),
	}
}

// pluginSets returns the go-plugin sets per protocol version. impl is nil
// on the host side.
func pluginSets(impl Launcher, versions []int) map[int]plugin.PluginSet {
	sets := map[int]plugin.PluginSet{}
	for _, v := range versions {
		switch v {
		case ProtocolV1:
			sets[v] = plugin.PluginSet{launcherPluginName: &grpcLauncherPlugin{impl: impl}}
		case ProtocolV2:
			sets[v] = plugin.PluginSet{
				launcherPluginName: &grpcLauncherPlugin{impl: impl},
				secretsPluginName:  &grpcSecretsPlugin{impl: impl},
			}
		}
	}
	return sets
}

// grpcLauncherPlugin glues the Launcher service into go-plugin.
type grpcLauncherPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	impl Launcher
}

func (p *grpcLauncherPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pb.RegisterLauncherServer(s, &server{impl: p.impl})
	return nil
}

func (p *grpcLauncherPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &client{rpc: pb.NewLauncherClient(c)}, nil
}

// grpcSecretsPlugin glues the SecretManager service into go-plugin. A
// plugin whose Launcher does not implement SecretManager registers a server
// that answers Unimplemented; the host checks the capability first.
type grpcSecretsPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	impl Launcher
}

func (p *grpcSecretsPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	sm, _ := p.impl.(SecretManager)
	pb.RegisterSecretManagerServer(s, &secretsServer{impl: sm})
	return nil
}

func (p *grpcSecretsPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &secretsClient{rpc: pb.NewSecretManagerClient(c)}, nil
}

// ErrNoSecrets is returned by NodeSecret when the plugin has no secret manager.
var ErrNoSecrets = errors.New("launcher has no secret manager")

// ErrNoPurge is returned by Purge when the plugin keeps nothing to purge.
var ErrNoPurge = errors.New("launcher has no purge capability")

// ErrNoStats is returned by LinkStats when the plugin reports no link
// stats.
var ErrNoStats = errors.New("launcher has no link stats")

// ErrNoCommands is returned by Commands and RunCommand when the plugin has
// no operator commands.
var ErrNoCommands = errors.New("launcher has no commands")
