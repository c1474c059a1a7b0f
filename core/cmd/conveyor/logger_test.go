package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/core/config"
)

// TestLoggerFormat: log_json = true makes every line a JSON object with the
// logger's name and the fields; without it lines are hclog's text.
func TestLoggerFormat(t *testing.T) {
	for _, tc := range []struct {
		json  bool
		level string
	}{{true, "info"}, {false, "info"}, {true, "warn"}} {
		var out bytes.Buffer
		cfg := &config.Config{Server: config.Server{LogJSON: tc.json, LogLevel: tc.level}}
		log := newLogger(cfg, &out, hclog.Trace).Named("node")
		log.Info("node state", "node", "k1", "state", "online")
		log.Debug("hidden")
		line := strings.TrimSpace(out.String())
		if strings.Contains(line, "hidden") {
			t.Errorf("json=%v level=%s: a debug line passed: %q", tc.json, tc.level, line)
		}
		if tc.level == "warn" {
			if line != "" {
				t.Errorf("level warn logged an info line: %q", line)
			}
			continue
		}
		var rec map[string]any
		err := json.Unmarshal([]byte(line), &rec)
		if tc.json {
			if err != nil || rec["@message"] != "node state" || rec["@module"] != "conveyor.node" || rec["node"] != "k1" || rec["state"] != "online" || rec["@level"] != "info" {
				t.Errorf("json line %q: %v %v", line, rec, err)
			}
		} else if err == nil || !strings.Contains(line, "[INFO]  conveyor.node: node state: node=k1 state=online") {
			t.Errorf("text line %q", line)
		}
	}
}
