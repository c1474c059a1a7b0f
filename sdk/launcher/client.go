package launcher

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/conveyor-ci/conveyor/sdk/internal/pluginrt"
	pb "github.com/conveyor-ci/conveyor/sdk/launcher/proto"
)

// client is the host's view of a plugin's Launcher over gRPC. It also
// implements the optional capabilities carried by the Launcher service;
// they answer ErrNoPurge and ErrNoCommands when the plugin lacks them.
type client struct {
	rpc pb.LauncherClient
}

var (
	_ Purger     = (*client)(nil)
	_ Commander  = (*client)(nil)
	_ LinkStater = (*client)(nil)
)

func (c *client) Info(ctx context.Context) (*Info, error) {
	r, err := c.rpc.Info(ctx, &pb.InfoRequest{})
	if err != nil {
		return nil, fmt.Errorf("info: %w", err)
	}
	return &Info{Name: r.Name, Version: r.Version, Description: r.Description, Capabilities: r.Capabilities}, nil
}

func (c *client) Schema(ctx context.Context) (*Schema, error) {
	r, err := c.rpc.Schema(ctx, &pb.SchemaRequest{})
	if err != nil {
		return nil, fmt.Errorf("schema: %w", err)
	}
	return &Schema{Global: r.Global, Node: r.Node}, nil
}

func (c *client) Configure(ctx context.Context, cfg *Config) error {
	global, err := marshalValue(cfg.Global)
	if err != nil {
		return fmt.Errorf("configure: global: %w", err)
	}
	req := &pb.ConfigureRequest{
		Host:   &pb.Host{ServerName: cfg.Host.ServerName, DataDir: cfg.Host.DataDir, Version: cfg.Host.Version, ValidateOnly: cfg.Host.ValidateOnly},
		Global: &pb.Value{Json: global},
	}
	if req.Nodes, err = nodesToProto(cfg.Nodes); err != nil {
		return fmt.Errorf("configure: %w", err)
	}
	r, err := c.rpc.Configure(ctx, req)
	if err != nil {
		return fmt.Errorf("configure: %w", err)
	}
	if len(r.Errors) == 0 {
		return nil
	}
	ces := make(ConfigErrors, len(r.Errors))
	for i, e := range r.Errors {
		ces[i] = ConfigError{Node: e.Node, Path: e.Path, Message: e.Message, Warning: e.Warning}
	}
	return ces
}

func (c *client) Launch(ctx context.Context, node *Node) (Conn, error) {
	req, err := nodeToProto(node)
	if err != nil {
		return nil, fmt.Errorf("launch node %q: %w", node.Name, err)
	}
	// The stream outlives ctx, which only bounds the launch itself.
	sctx, cancel := context.WithCancel(context.Background())
	stream, err := c.rpc.Launch(sctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("launch node %q: %w", node.Name, err)
	}
	type result struct {
		msg *pb.LaunchServerMessage
		err error
	}
	done := make(chan result, 1)
	go func() {
		// A failed Send shows up, with its real reason, in Recv.
		_ = stream.Send(&pb.LaunchClientMessage{Msg: &pb.LaunchClientMessage_Launch{Launch: req}, ReadsFrames: true})
		m, err := stream.Recv()
		done <- result{m, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		cancel()
		return nil, fmt.Errorf("launch node %q: %w", node.Name, ctx.Err())
	}
	if r.err != nil {
		cancel()
		err := statusErr(r.err)
		if st := status.Convert(r.err); st.Code() == codes.FailedPrecondition {
			err = Permanent(err)
			for _, d := range st.Details() {
				if p, ok := d.(*pb.PendingApproval); ok {
					err = ApprovalPending(p.Fingerprint, err)
				}
			}
		}
		return nil, fmt.Errorf("launch node %q: %w", node.Name, err)
	}
	launched := r.msg.GetLaunched()
	if launched == nil {
		cancel()
		return nil, fmt.Errorf("launch node %q: plugin sent a frame before confirming the launch", node.Name)
	}
	return newClientConn(stream, cancel, launched), nil
}

func (c *client) Teardown(ctx context.Context, node string) error {
	if _, err := c.rpc.Teardown(ctx, &pb.TeardownRequest{Node: node}); err != nil {
		return fmt.Errorf("teardown node %q: %w", node, statusErr(err))
	}
	return nil
}

// Purge asks the plugin to delete what it keeps for a removed node. It
// fails with ErrNoPurge when the plugin has no such capability.
func (c *client) Purge(ctx context.Context, node string) error {
	if _, err := c.rpc.Purge(ctx, &pb.PurgeRequest{Node: node}); err != nil {
		if status.Code(err) == codes.Unimplemented {
			return ErrNoPurge
		}
		return fmt.Errorf("purge node %q: %w", node, statusErr(err))
	}
	return nil
}

// LinkStats asks the plugin what it knows of a node's link. It fails with
// ErrNoStats when the plugin has no such capability.
func (c *client) LinkStats(ctx context.Context, node string) (*LinkStats, error) {
	r, err := c.rpc.LinkStats(ctx, &pb.LinkStatsRequest{Node: node})
	if err != nil {
		if status.Code(err) == codes.Unimplemented {
			return nil, ErrNoStats
		}
		return nil, fmt.Errorf("link stats of node %q: %w", node, statusErr(err))
	}
	st := &LinkStats{Connected: r.Connected, Endpoint: r.Endpoint, Reconnects: r.Reconnects, Malformed: r.Malformed}
	if r.SinceUnixNano != 0 {
		st.Since = time.Unix(0, r.SinceUnixNano)
	}
	for _, t := range r.Topics {
		st.Topics = append(st.Topics, TopicStats{Name: t.Name, Direction: t.Direction, Group: t.Group, Lag: t.Lag})
	}
	return st, nil
}

// Commands lists the plugin's operator commands. It fails with
// ErrNoCommands when the plugin has none.
func (c *client) Commands(ctx context.Context) ([]Command, error) {
	r, err := c.rpc.Commands(ctx, &pb.CommandsRequest{})
	if err != nil {
		if status.Code(err) == codes.Unimplemented {
			return nil, ErrNoCommands
		}
		return nil, fmt.Errorf("commands: %w", statusErr(err))
	}
	cmds := make([]Command, len(r.Commands))
	for i, cmd := range r.Commands {
		cmds[i] = Command{Name: cmd.Name, Help: cmd.Help}
	}
	return cmds, nil
}

// RunCommand runs one of the plugin's operator commands. It fails with
// ErrNoCommands when the plugin has none; a command that failed returns
// its error as the plugin worded it, with the output it had produced.
func (c *client) RunCommand(ctx context.Context, req *CommandRequest) (string, error) {
	nodes, err := nodesToProto(req.Nodes)
	if err != nil {
		return "", fmt.Errorf("command %s: %w", req.Name, err)
	}
	r, err := c.rpc.RunCommand(ctx, &pb.RunCommandRequest{Name: req.Name, Args: req.Args, Nodes: nodes})
	if err != nil {
		if status.Code(err) == codes.Unimplemented {
			return "", ErrNoCommands
		}
		return "", fmt.Errorf("command %s: %w", req.Name, statusErr(err))
	}
	if r.Error != "" {
		return r.Output, errors.New(r.Error)
	}
	return r.Output, nil
}

// clientConn is the host end of a launched node's frame stream. Its
// frames go out through a frameSender, several per message to a plugin
// whose Launched said it reads them.
type clientConn struct {
	stream pb.Launcher_LaunchClient
	cancel context.CancelFunc
	desc   string
	out    *frameSender

	pending [][]byte // received, not yet returned by Recv
	once    sync.Once
}

func newClientConn(stream pb.Launcher_LaunchClient, cancel context.CancelFunc, launched *pb.Launched) *clientConn {
	c := &clientConn{stream: stream, cancel: cancel, desc: launched.Description}
	pluginReads := launched.ReadsFrames
	c.out = newFrameSender(func(frames [][]byte) error {
		return sendFrames(frames, pluginReads,
			func(f []byte) error {
				return stream.Send(&pb.LaunchClientMessage{Msg: &pb.LaunchClientMessage_Frame{Frame: f}})
			},
			func(fs *pb.Frames) error {
				return stream.Send(&pb.LaunchClientMessage{Msg: &pb.LaunchClientMessage_Frames{Frames: fs}})
			})
	})
	go func() { _ = c.out.run() }()
	return c
}

// Send queues the frame for the stream; a failed stream fails the Sends
// after it, and Recv with the reason.
func (c *clientConn) Send(frame []byte) error {
	if err := c.out.Send(frame); err != nil {
		return statusErr(err)
	}
	return nil
}

// Recv returns the next frame, from a batch received before when one is
// left. It is called from one goroutine at a time.
func (c *clientConn) Recv() ([]byte, error) {
	for len(c.pending) == 0 {
		m, err := c.stream.Recv()
		if err != nil {
			return nil, statusErr(err)
		}
		c.pending = messageFrames(m)
	}
	f := c.pending[0]
	c.pending[0] = nil
	c.pending = c.pending[1:]
	return f, nil
}

// Close drops the frames not sent yet and ends the stream: half-closed
// first when no message is being sent, else at once (a message stuck
// behind a stalled plugin must not hold Close up).
func (c *clientConn) Close() error {
	c.once.Do(func() {
		if c.out.close(false) {
			_ = c.stream.CloseSend()
		}
		c.cancel()
		<-c.out.done
	})
	return nil
}

func (c *clientConn) Description() string { return c.desc }

// secretsClient is the host's view of a plugin's SecretManager.
type secretsClient struct {
	rpc pb.SecretManagerClient
}

func (c *secretsClient) NodeSecret(ctx context.Context, node string) (*NodeSecret, error) {
	r, err := c.rpc.NodeSecret(ctx, &pb.NodeSecretRequest{Node: node})
	if err != nil {
		if status.Code(err) == codes.Unimplemented {
			return nil, ErrNoSecrets
		}
		return nil, fmt.Errorf("node secret %q: %w", node, statusErr(err))
	}
	return &NodeSecret{Secret: r.Secret, AgentCommand: r.AgentCommand}, nil
}

// statusErr turns a gRPC status into a plain error carrying the plugin's
// message; io.EOF and context errors pass through unchanged.
func statusErr(err error) error { return pluginrt.StatusErr(err) }
