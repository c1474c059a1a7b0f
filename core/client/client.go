// Package client talks to a Conveyor server's HTTP API; the CLI uses it.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/conveyor-ci/conveyor/core/nodes"
	"github.com/conveyor-ci/conveyor/core/server"
	"github.com/conveyor-ci/conveyor/core/store"
)

// DefaultAddr is used when neither -address nor CONVEYOR_ADDR is set.
const DefaultAddr = "http://127.0.0.1:8080"

// AddrEnv names the environment variable holding the server's address.
const AddrEnv = "CONVEYOR_ADDR"

// TokenEnv and TokenFileEnv name the environment variables the CLI takes
// the API token from (the client itself only uses WithToken).
const (
	TokenEnv     = "CONVEYOR_TOKEN"
	TokenFileEnv = "CONVEYOR_TOKEN_FILE"
)

// Client is an API client.
type Client struct {
	base  string
	http  *http.Client
	token string
}

// Option configures a Client.
type Option func(*Client)

// WithToken makes the client send token as "Authorization: Bearer TOKEN"
// with every request; empty sends none.
func WithToken(token string) Option {
	return func(c *Client) { c.token = token }
}

// New returns a client for addr ("host:port" or a URL); empty means
// $CONVEYOR_ADDR, else DefaultAddr.
func New(addr string, opts ...Option) *Client {
	if addr == "" {
		addr = os.Getenv(AddrEnv)
	}
	if addr == "" {
		addr = DefaultAddr
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	c := &Client{base: strings.TrimRight(addr, "/"), http: &http.Client{}}
	for _, o := range opts {
		o(c)
	}
	return c
}

// ReadTokenFile returns the token held in a file (the server's
// data_dir/api-token, say), without surrounding whitespace.
func ReadTokenFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read API token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("read API token: %s is empty", path)
	}
	return tok, nil
}

// newRequest builds a request carrying the token.
func (c *Client) newRequest(ctx context.Context, method, path string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return req, nil
}

// APIError is an error answer from the server.
type APIError struct {
	Status  int
	Message string
	// Body is the raw answer (some errors carry a resource, e.g. the
	// finished build a cancel came too late for).
	Body []byte
}

// Error implements error.
func (e *APIError) Error() string { return fmt.Sprintf("server answered %d: %s", e.Status, e.Message) }

// Unauthorized reports whether the server refused the request for want of
// the right API token.
func (e *APIError) Unauthorized() bool { return e.Status == http.StatusUnauthorized }

// Forbidden reports whether the server refused the request because the
// token's role does not allow it.
func (e *APIError) Forbidden() bool { return e.Status == http.StatusForbidden }

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("%s %s: encode request: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := c.newRequest(ctx, method, path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return apiError(resp)
	}
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

func apiError(resp *http.Response) error {
	var e struct {
		Error string `json:"error"`
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if json.Unmarshal(b, &e) != nil || e.Error == "" {
		e.Error = strings.TrimSpace(string(b))
	}
	return &APIError{Status: resp.StatusCode, Message: e.Error, Body: b}
}

// Nodes lists the nodes.
func (c *Client) Nodes(ctx context.Context) ([]nodes.Status, error) {
	var out []nodes.Status
	return out, c.do(ctx, http.MethodGet, "/v1/nodes", nil, &out)
}

// Jobs lists the jobs.
func (c *Client) Jobs(ctx context.Context) ([]server.JobStatus, error) {
	var out []server.JobStatus
	return out, c.do(ctx, http.MethodGet, "/v1/jobs", nil, &out)
}

// Trigger queues a build of job.
func (c *Client) Trigger(ctx context.Context, job string, params map[string]string) (*store.Build, error) {
	var b store.Build
	err := c.do(ctx, http.MethodPost, "/v1/jobs/"+url.PathEscape(job)+"/builds", server.TriggerRequest{Params: params}, &b)
	return &b, err
}

// Builds lists job's builds, newest first.
func (c *Client) Builds(ctx context.Context, job string) ([]*store.Build, error) {
	var out []*store.Build
	return out, c.do(ctx, http.MethodGet, "/v1/jobs/"+url.PathEscape(job)+"/builds", nil, &out)
}

// Build returns build n of job.
func (c *Client) Build(ctx context.Context, job string, n int) (*store.Build, error) {
	var b store.Build
	return &b, c.do(ctx, http.MethodGet, buildPath(job, n), nil, &b)
}

// Cancel cancels build n of job.
func (c *Client) Cancel(ctx context.Context, job string, n int) (*store.Build, error) {
	var b store.Build
	err := c.do(ctx, http.MethodPost, buildPath(job, n)+"/cancel", nil, &b)
	var apiErr *APIError
	if errors.As(err, &apiErr) && apiErr.Status == http.StatusConflict {
		// The build had finished: the answer is the build as it ended.
		if json.Unmarshal(apiErr.Body, &b) == nil && b.Job != "" {
			return &b, &APIError{Status: apiErr.Status, Message: "build already finished", Body: apiErr.Body}
		}
	}
	return &b, err
}

// Secret returns a node's secret and agent command line.
func (c *Client) Secret(ctx context.Context, node string) (*server.SecretResponse, error) {
	var s server.SecretResponse
	return &s, c.do(ctx, http.MethodGet, "/v1/nodes/"+url.PathEscape(node)+"/secret", nil, &s)
}

// Log copies build n of job's log to w from offset, streaming until the
// build ends when follow is set; it returns the offset reached, so a
// broken stream can be resumed.
func (c *Client) Log(ctx context.Context, job string, n int, offset int64, follow bool, w io.Writer) (int64, error) {
	q := url.Values{"offset": {strconv.FormatInt(offset, 10)}, "follow": {strconv.FormatBool(follow)}}
	req, err := c.newRequest(ctx, http.MethodGet, buildPath(job, n)+"/log?"+q.Encode(), nil)
	if err != nil {
		return offset, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return offset, fmt.Errorf("follow log: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return offset, apiError(resp)
	}
	copied, err := io.Copy(w, resp.Body)
	return offset + copied, err
}

// DeleteNode forgets a node that left the configuration; with purge, its
// launcher deletes what it kept for it.
func (c *Client) DeleteNode(ctx context.Context, node string, purge bool) (*server.DeleteNodeResponse, error) {
	var r server.DeleteNodeResponse
	path := "/v1/nodes/" + url.PathEscape(node)
	if purge {
		path += "?purge=true"
	}
	return &r, c.do(ctx, http.MethodDelete, path, nil, &r)
}

// Node returns a node's status and history.
func (c *Client) Node(ctx context.Context, node string) (*server.NodeDetail, error) {
	var r server.NodeDetail
	return &r, c.do(ctx, http.MethodGet, "/v1/nodes/"+url.PathEscape(node), nil, &r)
}

// ControlNode applies a node control (nodes.ActionDrain, ActionOnline,
// ActionDisconnect, ActionLaunch, ActionApproveKey) and returns the
// node's status after it.
func (c *Client) ControlNode(ctx context.Context, node, action string, req server.NodeControlRequest) (*nodes.Status, error) {
	var r nodes.Status
	return &r, c.do(ctx, http.MethodPost, "/v1/nodes/"+url.PathEscape(node)+"/"+url.PathEscape(action), req, &r)
}

// Artifacts lists the files build n of job archived.
func (c *Client) Artifacts(ctx context.Context, job string, n int) ([]store.Artifact, error) {
	var out []store.Artifact
	return out, c.do(ctx, http.MethodGet, buildPath(job, n)+"/artifacts", nil, &out)
}

// DownloadArtifact copies the file build n of job archived at path
// (slash-separated, as Artifacts lists it) to w and returns its length.
func (c *Client) DownloadArtifact(ctx context.Context, job string, n int, path string, w io.Writer) (int64, error) {
	segs := strings.Split(path, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	req, err := c.newRequest(ctx, http.MethodGet, buildPath(job, n)+"/artifacts/"+strings.Join(segs, "/"), nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("download %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, apiError(resp)
	}
	n64, err := io.Copy(w, resp.Body)
	if err != nil {
		return n64, fmt.Errorf("download %s: %w", path, err)
	}
	return n64, nil
}

func buildPath(job string, n int) string {
	return "/v1/jobs/" + url.PathEscape(job) + "/builds/" + strconv.Itoa(n)
}

// Tokens lists the API tokens (admin role), the bootstrap token first.
func (c *Client) Tokens(ctx context.Context) ([]store.Token, error) {
	var out []store.Token
	return out, c.do(ctx, http.MethodGet, "/v1/tokens", nil, &out)
}

// CreateToken issues a token named name with role (admin role); the
// answer holds the token, which the server does not keep.
func (c *Client) CreateToken(ctx context.Context, name string, role store.Role) (*server.TokenResponse, error) {
	var out server.TokenResponse
	return &out, c.do(ctx, http.MethodPost, "/v1/tokens", server.TokenRequest{Name: name, Role: role}, &out)
}

// RevokeToken revokes the token named name (admin role).
func (c *Client) RevokeToken(ctx context.Context, name string) (*store.Token, error) {
	var out store.Token
	return &out, c.do(ctx, http.MethodDelete, "/v1/tokens/"+url.PathEscape(name), nil, &out)
}

// Reload has the server load its configuration again (admin role); with
// force, nodes and launchers are relaunched without waiting for their
// running builds. A configuration the server refused comes back as the
// result (OK false, Error saying why) with a nil error.
func (c *Client) Reload(ctx context.Context, force bool) (*server.ReloadResult, error) {
	var r server.ReloadResult
	path := "/v1/reload"
	if force {
		path += "?force=true"
	}
	err := c.do(ctx, http.MethodPost, path, nil, &r)
	var ae *APIError
	if errors.As(err, &ae) && ae.Status == http.StatusUnprocessableEntity && json.Unmarshal(ae.Body, &r) == nil {
		return &r, nil
	}
	return &r, err
}

// LastReload is the outcome of the server's last configuration reload
// (zero before the first).
func (c *Client) LastReload(ctx context.Context) (*server.ReloadResult, error) {
	var r server.ReloadResult
	return &r, c.do(ctx, http.MethodGet, "/v1/reload", nil, &r)
}
