package launcher

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/conveyor-ci/conveyor/sdk/launcher/proto"
)

// server runs inside the plugin and exposes a Launcher over gRPC.
type server struct {
	pb.UnimplementedLauncherServer
	impl Launcher
}

func (s *server) Info(ctx context.Context, _ *pb.InfoRequest) (*pb.InfoResponse, error) {
	info, err := s.impl.Info(ctx)
	if err != nil {
		return nil, err
	}
	caps := append([]string(nil), info.Capabilities...)
	if _, ok := s.impl.(SecretManager); ok && !info.Has(CapSecrets) {
		caps = append(caps, CapSecrets)
	}
	if _, ok := s.impl.(Purger); ok && !info.Has(CapPurge) {
		caps = append(caps, CapPurge)
	}
	if _, ok := s.impl.(Commander); ok && !info.Has(CapCommands) {
		caps = append(caps, CapCommands)
	}
	if _, ok := s.impl.(LinkStater); ok && !info.Has(CapStats) {
		caps = append(caps, CapStats)
	}
	return &pb.InfoResponse{Name: info.Name, Version: info.Version, Description: info.Description, Capabilities: caps}, nil
}

func (s *server) Schema(ctx context.Context, _ *pb.SchemaRequest) (*pb.SchemaResponse, error) {
	sch, err := s.impl.Schema(ctx)
	if err != nil {
		return nil, err
	}
	return &pb.SchemaResponse{Global: sch.Global, Node: sch.Node}, nil
}

func (s *server) Configure(ctx context.Context, req *pb.ConfigureRequest) (*pb.ConfigureResponse, error) {
	global, err := unmarshalValue(req.GetGlobal().GetJson())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "global config: %v", err)
	}
	cfg := &Config{Global: global}
	if h := req.GetHost(); h != nil {
		cfg.Host = Host{ServerName: h.ServerName, DataDir: h.DataDir, Version: h.Version, ValidateOnly: h.ValidateOnly}
	}
	if cfg.Nodes, err = nodesFromProto(req.Nodes); err != nil {
		return nil, err
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
		return nil, err
	}
	resp := &pb.ConfigureResponse{}
	for _, e := range ces {
		resp.Errors = append(resp.Errors, &pb.ConfigError{Node: e.Node, Path: e.Path, Message: e.Message, Warning: e.Warning})
	}
	return resp, nil
}

func (s *server) Launch(stream pb.Launcher_LaunchServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	req := first.GetLaunch()
	if req == nil {
		return status.Error(codes.InvalidArgument, "first launch message must name the node")
	}
	node, err := nodeFromProto(req)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "node %q config: %v", req.Name, err)
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	conn, err := s.impl.Launch(ctx, node)
	if err != nil {
		// The host names the node; the message is the launcher's own.
		// FailedPrecondition carries Permanent across the boundary.
		code := codes.Unavailable
		if IsPermanent(err) {
			code = codes.FailedPrecondition
		}
		st := status.New(code, err.Error())
		if fp, ok := PendingApproval(err); ok {
			// The detail carries the fingerprint waiting for approval.
			if d, derr := st.WithDetails(&pb.PendingApproval{Fingerprint: fp}); derr == nil {
				st = d
			}
		}
		return st.Err()
	}
	defer conn.Close()
	launched := &pb.Launched{ReadsFrames: true}
	if d, ok := conn.(Describer); ok {
		launched.Description = d.Description()
	}
	if err := stream.Send(&pb.LaunchServerMessage{Msg: &pb.LaunchServerMessage_Launched{Launched: launched}}); err != nil {
		return err
	}

	// agent -> host: the reader queues frames while the sender sends the
	// ones before them, several per message to a host that reads them.
	hostReads := first.ReadsFrames
	out := newFrameSender(func(frames [][]byte) error {
		return sendFrames(frames, hostReads,
			func(f []byte) error {
				return stream.Send(&pb.LaunchServerMessage{Msg: &pb.LaunchServerMessage_Frame{Frame: f}})
			},
			func(fs *pb.Frames) error {
				return stream.Send(&pb.LaunchServerMessage{Msg: &pb.LaunchServerMessage_Frames{Frames: fs}})
			})
	})
	defer out.close(false)
	errc := make(chan error, 3)
	go func() { errc <- out.run() }()
	go func() {
		for {
			frame, err := conn.Recv()
			switch {
			case errors.Is(err, io.EOF):
				out.close(true) // the agent's last frames still go; run ends then
				return
			case err != nil:
				errc <- err
				return
			}
			if err := out.Send(frame); err != nil {
				return // run reported why
			}
		}
	}()
	go func() { // host -> agent
		for {
			msg, err := stream.Recv()
			if err != nil {
				if errors.Is(err, io.EOF) {
					err = nil
				}
				errc <- err
				return
			}
			for _, f := range messageFrames(msg) {
				if err := conn.Send(f); err != nil {
					errc <- err
					return
				}
			}
		}
	}()
	if err := <-errc; err != nil {
		if _, ok := status.FromError(err); ok {
			return err
		}
		// The host knows the node; the plugin's error says what happened.
		return status.Error(codes.Aborted, err.Error())
	}
	return nil
}

func (s *server) Teardown(ctx context.Context, req *pb.TeardownRequest) (*pb.TeardownResponse, error) {
	if err := s.impl.Teardown(ctx, req.Node); err != nil {
		return nil, err
	}
	return &pb.TeardownResponse{}, nil
}

func (s *server) Purge(ctx context.Context, req *pb.PurgeRequest) (*pb.PurgeResponse, error) {
	p, ok := s.impl.(Purger)
	if !ok {
		return nil, status.Error(codes.Unimplemented, ErrNoPurge.Error())
	}
	if err := p.Purge(ctx, req.Node); err != nil {
		return nil, err
	}
	return &pb.PurgeResponse{}, nil
}

func (s *server) Commands(ctx context.Context, _ *pb.CommandsRequest) (*pb.CommandsResponse, error) {
	c, ok := s.impl.(Commander)
	if !ok {
		return nil, status.Error(codes.Unimplemented, ErrNoCommands.Error())
	}
	cmds, err := c.Commands(ctx)
	if err != nil {
		return nil, err
	}
	resp := &pb.CommandsResponse{}
	for _, cmd := range cmds {
		resp.Commands = append(resp.Commands, &pb.CommandInfo{Name: cmd.Name, Help: cmd.Help})
	}
	return resp, nil
}

func (s *server) RunCommand(ctx context.Context, req *pb.RunCommandRequest) (*pb.RunCommandResponse, error) {
	c, ok := s.impl.(Commander)
	if !ok {
		return nil, status.Error(codes.Unimplemented, ErrNoCommands.Error())
	}
	nodes, err := nodesFromProto(req.Nodes)
	if err != nil {
		return nil, err
	}
	out, err := c.RunCommand(ctx, &CommandRequest{Name: req.Name, Args: req.Args, Nodes: nodes})
	resp := &pb.RunCommandResponse{Output: out}
	if err != nil {
		resp.Error = err.Error()
		if resp.Error == "" {
			resp.Error = "command failed"
		}
	}
	return resp, nil
}

// secretsServer exposes a SecretManager over gRPC.
type secretsServer struct {
	pb.UnimplementedSecretManagerServer
	impl SecretManager
}

func (s *secretsServer) NodeSecret(ctx context.Context, req *pb.NodeSecretRequest) (*pb.NodeSecretResponse, error) {
	if s.impl == nil {
		return nil, status.Error(codes.Unimplemented, ErrNoSecrets.Error())
	}
	sec, err := s.impl.NodeSecret(ctx, req.Node)
	if err != nil {
		return nil, err
	}
	return &pb.NodeSecretResponse{Secret: sec.Secret, AgentCommand: sec.AgentCommand}, nil
}

func nodeFromProto(n *pb.NodeConfig) (*Node, error) {
	v, err := unmarshalValue(n.GetConfig().GetJson())
	if err != nil {
		return nil, err
	}
	return &Node{Name: n.Name, Labels: n.Labels, Config: v, ApprovedKeys: n.ApprovedHostKeys}, nil
}

// nodesFromProto decodes the nodes of a request; its error is the gRPC
// status to answer with.
func nodesFromProto(ns []*pb.NodeConfig) ([]*Node, error) {
	var nodes []*Node
	for _, n := range ns {
		node, err := nodeFromProto(n)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "node %q config: %v", n.Name, err)
		}
		nodes = append(nodes, node)
	}
	return nodes, nil
}

// nodesToProto encodes nodes for a request.
func nodesToProto(nodes []*Node) ([]*pb.NodeConfig, error) {
	var ns []*pb.NodeConfig
	for _, n := range nodes {
		pn, err := nodeToProto(n)
		if err != nil {
			return nil, fmt.Errorf("node %q: %w", n.Name, err)
		}
		ns = append(ns, pn)
	}
	return ns, nil
}

func nodeToProto(n *Node) (*pb.NodeConfig, error) {
	b, err := marshalValue(n.Config)
	if err != nil {
		return nil, err
	}
	return &pb.NodeConfig{Name: n.Name, Labels: n.Labels, Config: &pb.Value{Json: b}, ApprovedHostKeys: n.ApprovedKeys}, nil
}

func (s *server) LinkStats(ctx context.Context, req *pb.LinkStatsRequest) (*pb.LinkStatsResponse, error) {
	ls, ok := s.impl.(LinkStater)
	if !ok {
		return nil, status.Error(codes.Unimplemented, ErrNoStats.Error())
	}
	st, err := ls.LinkStats(ctx, req.Node)
	if err != nil {
		return nil, err
	}
	r := &pb.LinkStatsResponse{Connected: st.Connected, Endpoint: st.Endpoint, Reconnects: st.Reconnects, Malformed: st.Malformed}
	if !st.Since.IsZero() {
		r.SinceUnixNano = st.Since.UnixNano()
	}
	for _, t := range st.Topics {
		r.Topics = append(r.Topics, &pb.TopicStats{Name: t.Name, Direction: t.Direction, Group: t.Group, Lag: t.Lag})
	}
	return r, nil
}
