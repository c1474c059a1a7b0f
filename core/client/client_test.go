package client

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestToken: the client sends the token with every request, and a 401
// comes back as an Unauthorized APIError.
func TestToken(t *testing.T) {
	const token = "0123456789abcdef0123456789abcdef"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			w.Header().Set("WWW-Authenticate", "Bearer")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"error": "wrong API token"}`))
			return
		}
		if r.URL.Path == "/v1/jobs/j/builds/1/log" {
			_, _ = w.Write([]byte("log"))
			return
		}
		_, _ = w.Write([]byte(`[]`))
	}))
	defer srv.Close()
	tests := []struct {
		name   string
		opts   []Option
		unauth bool
	}{
		{"no token", nil, true},
		{"empty token", []Option{WithToken("")}, true},
		{"wrong token", []Option{WithToken("nope")}, true},
		{"right token", []Option{WithToken(token)}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(srv.URL, tt.opts...)
			_, err := c.Nodes(context.Background())
			_, logErr := c.Log(context.Background(), "j", 1, 0, false, &discard{})
			for _, err := range []error{err, logErr} {
				var apiErr *APIError
				got := errors.As(err, &apiErr) && apiErr.Unauthorized()
				if got != tt.unauth || (!tt.unauth && err != nil) {
					t.Errorf("err = %v, want unauthorized %v", err, tt.unauth)
				}
			}
		})
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
