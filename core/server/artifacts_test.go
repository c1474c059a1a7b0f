package server

import (
	"net/http"
	"testing"
)

// TestArtifactRoutesAccess: the artifact routes are read routes, like the
// log: the token is needed unless api.public_read is set.
func TestArtifactRoutesAccess(t *testing.T) {
	const token = "artifact-t0ken-0123456789abcdef"
	for _, publicRead := range []bool{false, true} {
		api := `api { token = "` + token + `" }`
		if publicRead {
			api = `api {
    token       = "` + token + `"
    public_read = true
  }`
		}
		ts := startServer(t, loadConfig(t, t.TempDir(), api))
		for _, path := range []string{"/v1/jobs/hello/builds/1/artifacts", "/v1/jobs/hello/builds/1/artifacts/dist/app.tar.gz"} {
			anonymous := http.StatusUnauthorized
			if publicRead {
				anonymous = http.StatusNotFound // no such job
			}
			if code, _, body := ts.do(t, "GET", path, ""); code != anonymous {
				t.Errorf("public_read %v: GET %s without a token: %d %s, want %d", publicRead, path, code, body, anonymous)
			}
			if code, _, body := ts.do(t, "GET", path, token); code != http.StatusNotFound {
				t.Errorf("public_read %v: GET %s with the token: %d %s, want 404", publicRead, path, code, body)
			}
		}
		if code, _, _ := ts.do(t, "GET", "/v1/jobs/hello/builds/0/artifacts", token); code != http.StatusBadRequest {
			t.Errorf("build 0: %d, want 400", code)
		}
	}
}
