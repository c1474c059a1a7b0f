package provisioner

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/conveyor-ci/conveyor/sdk/internal/pluginrt"
	pb "github.com/conveyor-ci/conveyor/sdk/provisioner/proto/v1"
)

// server runs inside the plugin and exposes a Provisioner over gRPC.
type server struct {
	pb.UnimplementedProvisionerServer
	impl Provisioner
}

// rpcErr turns the plugin's error into a gRPC status: Permanent errors
// travel as FailedPrecondition, context errors keep their meaning.
func rpcErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case IsPermanent(err):
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	return status.Error(codes.Unknown, err.Error())
}

func (s *server) Info(ctx context.Context, _ *pb.InfoRequest) (*pb.InfoResponse, error) {
	info, err := s.impl.Info(ctx)
	if err != nil {
		return nil, rpcErr(err)
	}
	return &pb.InfoResponse{Name: info.Name, Version: info.Version, Description: info.Description, Capabilities: info.Capabilities}, nil
}

func (s *server) Schema(ctx context.Context, _ *pb.SchemaRequest) (*pb.SchemaResponse, error) {
	sch, err := s.impl.Schema(ctx)
	if err != nil {
		return nil, rpcErr(err)
	}
	return &pb.SchemaResponse{Global: sch.Global, Pool: sch.Pool}, nil
}

func (s *server) Configure(ctx context.Context, req *pb.ConfigureRequest) (*pb.ConfigureResponse, error) {
	global, err := pluginrt.UnmarshalValue(req.GetGlobal().GetJson())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "global config: %v", err)
	}
	cfg := &Config{Global: global}
	if h := req.GetHost(); h != nil {
		cfg.Host = Host{ServerName: h.ServerName, DataDir: h.DataDir, Version: h.Version, ValidateOnly: h.ValidateOnly, MasterID: h.MasterId}
	}
	for _, p := range req.Pools {
		v, err := pluginrt.UnmarshalValue(p.GetConfig().GetJson())
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "pool %q config: %v", p.Name, err)
		}
		cfg.Pools = append(cfg.Pools, &Pool{Name: p.Name, Config: v})
	}
	err = s.impl.Configure(ctx, cfg)
	var ces ConfigErrors
	var ce ConfigError
	switch {
	case err == nil:
		return &pb.ConfigureResponse{}, nil
	case errors.As(err, &ces):
	case errors.As(err, &ce):
		ces = ConfigErrors{ce}
	default:
		return nil, rpcErr(err)
	}
	resp := &pb.ConfigureResponse{}
	for _, e := range ces {
		resp.Errors = append(resp.Errors, &pb.ConfigError{Pool: e.Pool, Path: e.Path, Message: e.Message, Warning: e.Warning})
	}
	return resp, nil
}

func (s *server) Create(ctx context.Context, m *pb.CreateRequest) (*pb.CreateResponse, error) {
	req := createFromProto(m)
	if err := req.Validate(); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	ins, err := s.impl.Create(ctx, req)
	resp := &pb.CreateResponse{Instances: instancesToProto(ins)}
	if err != nil {
		resp.Error = err.Error()
		resp.Permanent = IsPermanent(err)
	}
	return resp, nil
}

func (s *server) List(ctx context.Context, m *pb.ListRequest) (*pb.ListResponse, error) {
	ins, err := s.impl.List(ctx, m.Tags)
	if err != nil {
		return nil, rpcErr(err)
	}
	return &pb.ListResponse{Instances: instancesToProto(ins)}, nil
}

func (s *server) Delete(ctx context.Context, m *pb.DeleteRequest) (*pb.DeleteResponse, error) {
	if err := s.impl.Delete(ctx, m.Ids); err != nil {
		return nil, rpcErr(err)
	}
	return &pb.DeleteResponse{}, nil
}

func (s *server) Health(ctx context.Context, _ *pb.HealthRequest) (*pb.HealthResponse, error) {
	if err := s.impl.Health(ctx); err != nil {
		return nil, rpcErr(err)
	}
	return &pb.HealthResponse{}, nil
}
