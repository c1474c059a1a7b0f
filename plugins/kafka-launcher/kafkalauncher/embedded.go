package kafkalauncher

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkatransport"
)

// bindRetry is how long a start keeps retrying a port still held by a
// previous plugin process that just died.
const bindRetry = 10 * time.Second

// embeddedBroker is the in-process single broker the plugin runs when no
// brokers are configured.
type embeddedBroker struct {
	cluster *kfake.Cluster
	addr    string
	dir     string
	sasl    *kafkatransport.SASL
}

// startEmbedded starts a broker listening on addr (a loopback host:port)
// that keeps its state in dataDir/broker, so topics, records and committed
// offsets survive a restart of the plugin.
func startEmbedded(ctx context.Context, dataDir, addr string, sasl *kafkatransport.SASL, logger hclog.Logger) (*embeddedBroker, error) {
	dir := filepath.Join(dataDir, "broker")
	_, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("embedded broker address %q: %w", addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("embedded broker port %q: %w", portStr, err)
	}
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.Ports(port),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) { return net.Listen(network, addr) }),
		kfake.DataDir(dir),
		kfake.ClusterID("conveyor-embedded"),
		kfake.DefaultNumPartitions(1),
		kfake.WithLogger(kfakeLogger{logger}),
	}
	if sasl != nil {
		opts = append(opts, kfake.EnableSASL(), kfake.Superuser(sasl.Mechanism, sasl.Username, sasl.Password))
	}
	deadline := time.Now().Add(bindRetry)
	for {
		c, err := kfake.NewCluster(opts...)
		if err == nil {
			return &embeddedBroker{cluster: c, addr: addr, dir: dir, sasl: sasl}, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			return nil, fmt.Errorf("start embedded kafka broker on %s (data in %s): %w", addr, dir, err)
		}
		logger.Debug("embedded broker address in use, retrying", "addr", addr)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("start embedded kafka broker on %s: %w", addr, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// same reports whether the broker runs as asked.
func (b *embeddedBroker) same(dataDir, addr string, sasl *kafkatransport.SASL) bool {
	if b.addr != addr || b.dir != filepath.Join(dataDir, "broker") || (b.sasl == nil) != (sasl == nil) {
		return false
	}
	return b.sasl == nil || *b.sasl == *sasl
}

// close stops the broker, flushing its state to disk.
func (b *embeddedBroker) close() { b.cluster.Close() }

// kfakeLogger forwards the broker's warnings and errors to hclog.
type kfakeLogger struct{ log hclog.Logger }

// Logf implements kfake.Logger.
func (l kfakeLogger) Logf(level kfake.LogLevel, msg string, args ...any) {
	switch level {
	case kfake.LogLevelError:
		l.log.Error(fmt.Sprintf(msg, args...))
	case kfake.LogLevelWarn:
		l.log.Warn(fmt.Sprintf(msg, args...))
	}
}
