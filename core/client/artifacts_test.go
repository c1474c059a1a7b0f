package client

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestDownloadArtifactPath: each segment of an artifact's path is escaped,
// its slashes kept.
func TestDownloadArtifactPath(t *testing.T) {
	var got string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.URL.EscapedPath()
		_, _ = w.Write([]byte("content"))
	}))
	defer srv.Close()
	var buf bytes.Buffer
	n, err := New(srv.URL).DownloadArtifact(context.Background(), "my job", 3, "dist/a b#1?.tar.gz", &buf)
	if err != nil || n != 7 || buf.String() != "content" {
		t.Fatalf("download: %d bytes %q, %v", n, buf.String(), err)
	}
	if want := "/v1/jobs/my%20job/builds/3/artifacts/dist/a%20b%231%3F.tar.gz"; got != want {
		t.Errorf("path %s, want %s", got, want)
	}
}
