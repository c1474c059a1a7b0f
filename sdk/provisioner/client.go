package provisioner

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/conveyor-ci/conveyor/sdk/internal/pluginrt"
	pb "github.com/conveyor-ci/conveyor/sdk/provisioner/proto/v1"
)

// client is the host's view of a plugin's Provisioner over gRPC.
type client struct {
	rpc pb.ProvisionerClient
}

func (c *client) Info(ctx context.Context) (*Info, error) {
	r, err := c.rpc.Info(ctx, &pb.InfoRequest{})
	if err != nil {
		return nil, fmt.Errorf("info: %w", statusErr(err))
	}
	return &Info{Name: r.Name, Version: r.Version, Description: r.Description, Capabilities: r.Capabilities}, nil
}

func (c *client) Schema(ctx context.Context) (*Schema, error) {
	r, err := c.rpc.Schema(ctx, &pb.SchemaRequest{})
	if err != nil {
		return nil, fmt.Errorf("schema: %w", statusErr(err))
	}
	return &Schema{Global: r.Global, Pool: r.Pool}, nil
}

func (c *client) Configure(ctx context.Context, cfg *Config) error {
	global, err := pluginrt.MarshalValue(cfg.Global)
	if err != nil {
		return fmt.Errorf("configure: global: %w", err)
	}
	h := cfg.Host
	req := &pb.ConfigureRequest{
		Host:   &pb.Host{ServerName: h.ServerName, DataDir: h.DataDir, Version: h.Version, ValidateOnly: h.ValidateOnly, MasterId: h.MasterID},
		Global: &pb.Value{Json: global},
	}
	for _, p := range cfg.Pools {
		v, err := pluginrt.MarshalValue(p.Config)
		if err != nil {
			return fmt.Errorf("configure: pool %q: %w", p.Name, err)
		}
		req.Pools = append(req.Pools, &pb.Pool{Name: p.Name, Config: &pb.Value{Json: v}})
	}
	r, err := c.rpc.Configure(ctx, req)
	if err != nil {
		return fmt.Errorf("configure: %w", statusErr(err))
	}
	if len(r.Errors) == 0 {
		return nil
	}
	ces := make(ConfigErrors, len(r.Errors))
	for i, e := range r.Errors {
		ces[i] = ConfigError{Pool: e.Pool, Path: e.Path, Message: e.Message, Warning: e.Warning}
	}
	return ces
}

func (c *client) Create(ctx context.Context, req *CreateRequest) ([]*Instance, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	r, err := c.rpc.Create(ctx, createToProto(req))
	if err != nil {
		return nil, fmt.Errorf("create %s in pool %q: %w", req.RequestID, req.Pool, statusErr(err))
	}
	ins := instancesFromProto(r.Instances)
	if r.Error == "" {
		return ins, nil
	}
	err = errors.New(r.Error)
	if r.Permanent {
		err = Permanent(err)
	}
	return ins, fmt.Errorf("create %s in pool %q: %w", req.RequestID, req.Pool, err)
}

func (c *client) List(ctx context.Context, tags map[string]string) ([]*Instance, error) {
	r, err := c.rpc.List(ctx, &pb.ListRequest{Tags: tags})
	if err != nil {
		return nil, fmt.Errorf("list instances: %w", statusErr(err))
	}
	return instancesFromProto(r.Instances), nil
}

func (c *client) Delete(ctx context.Context, ids []string) error {
	if _, err := c.rpc.Delete(ctx, &pb.DeleteRequest{Ids: ids}); err != nil {
		return fmt.Errorf("delete instances %v: %w", ids, statusErr(err))
	}
	return nil
}

func (c *client) Health(ctx context.Context) error {
	if _, err := c.rpc.Health(ctx, &pb.HealthRequest{}); err != nil {
		return fmt.Errorf("health: %w", statusErr(err))
	}
	return nil
}

// statusErr is pluginrt.StatusErr, with FailedPrecondition (how the
// server sends a Permanent error) made Permanent again.
func statusErr(err error) error {
	if status.Code(err) == codes.FailedPrecondition {
		return Permanent(pluginrt.StatusErr(err))
	}
	return pluginrt.StatusErr(err)
}
