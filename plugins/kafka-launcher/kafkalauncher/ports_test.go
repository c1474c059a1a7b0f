package kafkalauncher

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/conveyor-ci/conveyor/sdk/launcher"
)

// TestBrokerPorts: a broker's port is a TCP port number, 1-65535 (port =
// 99999 used to pass validation).
func TestBrokerPorts(t *testing.T) {
	dir := t.TempDir()
	l := New(testLogger(t))
	defer l.Close()
	for _, tc := range []struct {
		broker string
		ok     bool
	}{
		{"127.0.0.1:9092", true},
		{"127.0.0.1:65535", true},
		{"127.0.0.1:99999", false},
		{"127.0.0.1:0", false},
		{"127.0.0.1:-1", false},
		{"kafka.example:http", false},
	} {
		cfg := config(t, dir, `brokers = ["`+tc.broker+`"]`+"\n", "a")
		cfg.Host.ValidateOnly = true
		err := l.Configure(ctxT(t), cfg)
		var ces launcher.ConfigErrors
		found := errors.As(err, &ces) && len(ces) > 0 && reflect.DeepEqual(ces[0].Path, []string{"brokers"}) && strings.Contains(ces[0].Message, "TCP port")
		if found == tc.ok || (tc.ok && err != nil) {
			t.Errorf("broker %q: %v, want ok %v", tc.broker, err, tc.ok)
		}
	}
}
