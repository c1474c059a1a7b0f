package provisioner

import (
	"context"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	pb "github.com/conveyor-ci/conveyor/sdk/provisioner/proto/v1"
)

// pluginName names the provisioner in a go-plugin plugin set.
const pluginName = "provisioner"

// ProtocolV1 is the provisioner protocol version this SDK speaks
// (proto/v1).
const ProtocolV1 = 1

// Handshake is the go-plugin handshake of provisioner plugins. Its cookie
// differs from the launchers' so that a launcher binary named where a
// provisioner is expected fails at once, and the other way round. It is
// not a security measure.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  ProtocolV1,
	MagicCookieKey:   "CONVEYOR_PROVISIONER_PLUGIN",
	MagicCookieValue: "9a4f2c7e1b8d4e6a0c3f5b2d7e9a1c4b",
}

// pluginSets returns the go-plugin sets per protocol version. impl is nil
// on the host side.
func pluginSets(impl Provisioner) map[int]plugin.PluginSet {
	return map[int]plugin.PluginSet{
		ProtocolV1: {pluginName: &grpcPlugin{impl: impl}},
	}
}

// grpcPlugin glues the Provisioner service into go-plugin.
type grpcPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	impl Provisioner
}

func (p *grpcPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pb.RegisterProvisionerServer(s, &server{impl: p.impl})
	return nil
}

func (p *grpcPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &client{rpc: pb.NewProvisionerClient(c)}, nil
}
