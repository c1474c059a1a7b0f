package launcher

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/conveyor-ci/conveyor/sdk/launcher/proto"
)

// batchWait bounds waiting for a frame on a busy machine: only a broken
// sender takes that long.
const batchWait = 30 * time.Second

// numbered is frame i of a test: its number, padded to size bytes.
func numbered(i, size int) []byte {
	b := fmt.Appendf(nil, "frame %08d ", i)
	return append(b, bytes.Repeat([]byte{'.'}, max(0, size-len(b)))...)
}

// gatedSender is a frameSender whose messages are recorded, each waiting
// for the test to let it go.
type gatedSender struct {
	*frameSender
	sent chan [][]byte // each message's frames, as its send begins
	gate chan struct{} // one token lets one message finish
}

func newGatedSender(t *testing.T) *gatedSender {
	g := &gatedSender{sent: make(chan [][]byte, 1000), gate: make(chan struct{}, 1000)}
	g.frameSender = newFrameSender(func(frames [][]byte) error {
		g.sent <- frames
		<-g.gate
		return nil
	})
	done := make(chan error, 1)
	go func() { done <- g.run() }()
	t.Cleanup(func() {
		g.close(false)
		close(g.gate)
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	return g
}

// message waits for the next message's frames.
func (g *gatedSender) message(t *testing.T) [][]byte {
	t.Helper()
	select {
	case m := <-g.sent:
		return m
	case <-time.After(batchWait):
		t.Fatalf("no message sent within %v", batchWait)
		return nil
	}
}

// TestFrameSenderBatches: frames queued while a message is being sent go
// out together in the next one, in order, each message within
// maxBatchBytes; a lone frame on an idle sender goes out at once, alone.
func TestFrameSenderBatches(t *testing.T) {
	tests := []struct {
		name    string
		size    int // bytes per frame
		queued  int // frames queued behind the first
		batches []int
	}{
		{name: "small frames in one batch", size: 100, queued: 500, batches: []int{500}},
		{name: "split at the byte cap", size: 50 << 10, queued: 8, batches: []int{5, 3}},
		{name: "frame over the cap goes alone", size: maxBatchBytes + 1, queued: 2, batches: []int{1, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newGatedSender(t)
			if err := g.Send(numbered(0, tt.size)); err != nil {
				t.Fatal(err)
			}
			// The lone frame is sent with nothing else queued: the sender
			// does not wait for a batch to fill.
			if m := g.message(t); len(m) != 1 || !bytes.Equal(m[0], numbered(0, tt.size)) {
				t.Fatalf("first message: %d frames, want the lone frame", len(m))
			}
			// Its send is held: the next frames queue behind it. Send
			// returns (a slow peer blocks it only beyond maxQueuedBytes).
			queued := make(chan error, 1)
			go func() {
				for i := 1; i <= tt.queued; i++ {
					if err := g.Send(numbered(i, tt.size)); err != nil {
						queued <- err
						return
					}
				}
				queued <- nil
			}()
			fits := tt.size*(1+tt.queued) <= maxQueuedBytes
			if fits {
				if err := <-queued; err != nil {
					t.Fatal(err)
				}
			}
			next := 1
			for bi, want := range tt.batches {
				g.gate <- struct{}{}
				m := g.message(t)
				size := 0
				for _, f := range m {
					if !bytes.Equal(f, numbered(next, tt.size)) {
						t.Fatalf("batch %d: got %.14q, want frame %d", bi, f, next)
					}
					size += len(f)
					next++
				}
				if len(m) > 1 && size > maxBatchBytes {
					t.Errorf("batch %d: %d bytes, over the cap %d", bi, size, maxBatchBytes)
				}
				if len(m) != want {
					t.Errorf("batch %d: %d frames, want %d", bi, len(m), want)
				}
			}
			if !fits {
				if err := <-queued; err != nil {
					t.Fatal(err)
				}
			}
			g.gate <- struct{}{}
		})
	}
}

// TestFrameSenderClose: close with flush sends what is queued, close
// without drops it; either way later Sends fail, and a failed send fails
// the Sends after it with its reason.
func TestFrameSenderClose(t *testing.T) {
	for _, flush := range []bool{true, false} {
		t.Run(fmt.Sprintf("flush=%v", flush), func(t *testing.T) {
			var got [][]byte
			held := make(chan struct{})
			release := make(chan struct{})
			s := newFrameSender(func(frames [][]byte) error {
				if len(got) == 0 {
					close(held)
					<-release
				}
				got = append(got, frames...)
				return nil
			})
			done := make(chan error, 1)
			go func() { done <- s.run() }()
			for i := range 3 {
				if err := s.Send(numbered(i, 10)); err != nil {
					t.Fatal(err)
				}
				if i == 0 {
					<-held // frames 1 and 2 queue behind frame 0's send
				}
			}
			s.close(flush)
			close(release)
			if err := <-done; err != nil {
				t.Fatalf("run: %v", err)
			}
			want := 1
			if flush {
				want = 3
			}
			if len(got) != want {
				t.Fatalf("%d frames sent, want %d", len(got), want)
			}
			if err := s.Send(numbered(9, 10)); !errors.Is(err, errConnClosed) {
				t.Fatalf("Send after close: %v, want %v", err, errConnClosed)
			}
		})
	}
	t.Run("send fails", func(t *testing.T) {
		broken := errors.New("stream broken")
		s := newFrameSender(func([][]byte) error { return broken })
		done := make(chan error, 1)
		go func() { done <- s.run() }()
		if err := s.Send(numbered(0, 10)); err != nil {
			t.Fatal(err)
		}
		if err := <-done; !errors.Is(err, broken) {
			t.Fatalf("run: %v, want %v", err, broken)
		}
		if err := s.Send(numbered(1, 10)); !errors.Is(err, broken) {
			t.Fatalf("Send after the failure: %v, want %v", err, broken)
		}
	})
}

// echoLauncher launches nodes whose agent sends back every frame it gets.
type echoLauncher struct{}

func (echoLauncher) Info(context.Context) (*Info, error) { return &Info{Name: "echo"}, nil }
func (echoLauncher) Schema(context.Context) (*Schema, error) {
	return &Schema{}, nil
}
func (echoLauncher) Configure(context.Context, *Config) error { return nil }
func (echoLauncher) Launch(context.Context, *Node) (Conn, error) {
	return &echoConn{frames: make(chan []byte, 4096), done: make(chan struct{})}, nil
}
func (echoLauncher) Teardown(context.Context, string) error { return nil }

type echoConn struct {
	frames chan []byte
	done   chan struct{}
	once   sync.Once
}

func (c *echoConn) Send(frame []byte) error {
	select {
	case c.frames <- frame:
		return nil
	case <-c.done:
		return io.ErrClosedPipe
	}
}

func (c *echoConn) Recv() ([]byte, error) {
	select {
	case f := <-c.frames:
		return f, nil
	case <-c.done:
		return nil, io.EOF
	}
}

func (c *echoConn) Close() error {
	c.once.Do(func() { close(c.done) })
	return nil
}

// oldServer is the Launch stream of a plugin built before frames: it
// never sets Launched.reads_frames and reads the single frame field only;
// it fails the stream if it ever gets a Frames message.
type oldServer struct {
	pb.UnimplementedLauncherServer
}

func (oldServer) Launch(stream pb.Launcher_LaunchServer) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	if err := stream.Send(&pb.LaunchServerMessage{Msg: &pb.LaunchServerMessage_Launched{Launched: &pb.Launched{Description: "old"}}}); err != nil {
		return err
	}
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if m.GetFrames() != nil {
			return status.Error(codes.InvalidArgument, "old plugin got a Frames message")
		}
		if err := stream.Send(&pb.LaunchServerMessage{Msg: &pb.LaunchServerMessage_Frame{Frame: m.GetFrame()}}); err != nil {
			return err
		}
	}
}

// serveLauncher serves srv with the plugin's gRPC options on a loopback
// port and returns a connection to it with the host's.
func serveLauncher(t *testing.T, srv pb.LauncherServer) *grpc.ClientConn {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(serverOptions()...)
	pb.RegisterLauncherServer(s, srv)
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), append(dialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// TestLaunchStreamFrames sends frames through a real Launch stream to an
// agent that echoes them: a lone frame comes back without anything after
// it to fill a batch, then thousands sent back to back all come back, in
// order, complete, whether the plugin reads batches (the current server)
// or not (one built before them).
func TestLaunchStreamFrames(t *testing.T) {
	const n = 5000
	for _, tt := range []struct {
		name string
		srv  pb.LauncherServer
	}{
		{"current plugin", &server{impl: echoLauncher{}}},
		{"plugin before frames", oldServer{}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := &client{rpc: pb.NewLauncherClient(serveLauncher(t, tt.srv))}
			ctx, cancel := context.WithTimeout(context.Background(), batchWait)
			defer cancel()
			conn, err := c.Launch(ctx, &Node{Name: "n1"})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()

			lone := numbered(-1, 64)
			if err := conn.Send(lone); err != nil {
				t.Fatal(err)
			}
			got := make(chan []byte, 1)
			go func() {
				f, err := conn.Recv()
				if err != nil {
					t.Errorf("recv the lone frame: %v", err)
				}
				got <- f
			}()
			select {
			case f := <-got:
				if !bytes.Equal(f, lone) {
					t.Fatalf("lone frame came back as %.14q", f)
				}
			case <-time.After(batchWait):
				t.Fatalf("the lone frame did not come back within %v", batchWait)
			}

			sendErr := make(chan error, 1)
			go func() {
				for i := range n {
					if err := conn.Send(numbered(i, 1+i%3000)); err != nil {
						sendErr <- err
						return
					}
				}
				sendErr <- nil
			}()
			for i := range n {
				f, err := conn.Recv()
				if err != nil {
					t.Fatalf("recv frame %d: %v", i, err)
				}
				if !bytes.Equal(f, numbered(i, 1+i%3000)) {
					t.Fatalf("frame %d came back as %.14q", i, f)
				}
			}
			if err := <-sendErr; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestLaunchStreamOldHost: a host built before frames does not set
// reads_frames; the plugin then sends every frame in a message of its
// own, in order, however many are queued.
func TestLaunchStreamOldHost(t *testing.T) {
	const n = 2000
	rpc := pb.NewLauncherClient(serveLauncher(t, &server{impl: echoLauncher{}}))
	ctx, cancel := context.WithTimeout(context.Background(), batchWait)
	defer cancel()
	stream, err := rpc.Launch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&pb.LaunchClientMessage{Msg: &pb.LaunchClientMessage_Launch{Launch: &pb.NodeConfig{Name: "n1"}}}); err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if !first.GetLaunched().GetReadsFrames() {
		t.Errorf("Launched does not say the plugin reads frames")
	}
	// All frames go out before any is read back, so the echo queues up
	// in the plugin while it sends.
	for i := range n {
		if err := stream.Send(&pb.LaunchClientMessage{Msg: &pb.LaunchClientMessage_Frame{Frame: numbered(i, 1000)}}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		m, err := stream.Recv()
		if err != nil {
			t.Fatalf("recv frame %d: %v", i, err)
		}
		if m.GetFrames() != nil {
			t.Fatalf("message %d is a Frames message, to a host that does not read them", i)
		}
		if !bytes.Equal(m.GetFrame(), numbered(i, 1000)) {
			t.Fatalf("frame %d came back as %.14q", i, m.GetFrame())
		}
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
}
