package server

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/conveyor-ci/conveyor/core/nodes"
	"github.com/conveyor-ci/conveyor/core/store"
)

// NodeDetail is the body of GET /v1/nodes/{node}: the node's status and
// its history (what operators and the master did to it), oldest first.
type NodeDetail struct {
	nodes.Status
	History []store.NodeEvent `json:"history"`
}

// NodeControlRequest is the optional body of POST
// /v1/nodes/{node}/{drain,online,disconnect,launch,approve-key}.
type NodeControlRequest struct {
	// Reason says why (drain, disconnect); it is kept in the node's
	// history.
	Reason string `json:"reason,omitempty"`
	// Fingerprint is the SHA256 fingerprint of the host key to approve
	// (approve-key), as the node shows it: "SHA256:...".
	Fingerprint string `json:"fingerprint,omitempty"`
}

// maxReason bounds a control's reason.
const maxReason = 1024

// withNode finds the configured node of the path.
func (s *Server) withNode(h func(http.ResponseWriter, *http.Request, *nodes.Node)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		n := s.nodes.Get(r.PathValue("node"))
		if n == nil {
			writeError(w, http.StatusNotFound, "no such node: "+r.PathValue("node"))
			return
		}
		h(w, r, n)
	}
}

// nodeControlRoutes registers the node controls (admin): each answers the
// node's status after the change.
func (s *Server) nodeControlRoutes(rt router) {
	for _, action := range []string{nodes.ActionDrain, nodes.ActionOnline, nodes.ActionDisconnect, nodes.ActionLaunch, nodes.ActionApproveKey} {
		rt.handle("POST /v1/nodes/{node}/"+action, admin, s.withNode(func(w http.ResponseWriter, r *http.Request, n *nodes.Node) {
			var req NodeControlRequest
			if r.ContentLength != 0 {
				if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&req); err != nil {
					writeError(w, http.StatusBadRequest, "invalid request body: "+err.Error())
					return
				}
			}
			by, _ := identityOf(r.Context())
			if err := s.controlNode(n, action, req, by.Name); err != nil {
				writeControlError(w, err)
				return
			}
			writeJSON(w, http.StatusOK, n.Status())
		}))
	}
}

// errBadControl is a control request that cannot be honoured as written.
var errBadControl = errors.New("bad request")

// controlNode applies one control to n on behalf of by (a token's name).
func (s *Server) controlNode(n *nodes.Node, action string, req NodeControlRequest, by string) error {
	reason := strings.TrimSpace(req.Reason)
	if len(reason) > maxReason {
		return errors.Join(errBadControl, errors.New("the reason is longer than 1024 bytes"))
	}
	switch action {
	case nodes.ActionDrain:
		return s.nodes.Drain(n, by, reason)
	case nodes.ActionOnline:
		return s.nodes.Online(n, by)
	case nodes.ActionDisconnect:
		return s.nodes.Disconnect(n, by, reason)
	case nodes.ActionLaunch:
		return s.nodes.Launch(n, by)
	case nodes.ActionApproveKey:
		if err := s.nodes.ApproveKey(n, by, strings.TrimSpace(req.Fingerprint)); err != nil {
			if errors.Is(err, nodes.ErrBadFingerprint) {
				return errors.Join(errBadControl, err)
			}
			return err
		}
		return nil
	}
	return errors.Join(errBadControl, errors.New("unknown node control "+action))
}

func writeControlError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, errBadControl):
		writeError(w, http.StatusBadRequest, strings.TrimPrefix(err.Error(), errBadControl.Error()+"\n"))
	case errors.Is(err, nodes.ErrNotConnected), errors.Is(err, nodes.ErrAlreadyUp), errors.Is(err, nodes.ErrNotDrained), errors.Is(err, nodes.ErrDrained):
		writeError(w, http.StatusConflict, err.Error())
	default:
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

// nodeData is the node page's.
type nodeData struct {
	Status  nodes.Status
	History []store.NodeEvent
	// Error says why the last control failed.
	Error string
}

// uiNode shows a node: its state, its controls (admin) and its history.
func (s *Server) uiNode(w http.ResponseWriter, r *http.Request, n *nodes.Node) {
	s.renderNode(w, r, http.StatusOK, n, "")
}

func (s *Server) renderNode(w http.ResponseWriter, r *http.Request, code int, n *nodes.Node, msg string) {
	hist, err := s.nodes.History(n)
	if err != nil {
		s.uiError(w, r, http.StatusInternalServerError, err.Error())
		return
	}
	slices.Reverse(hist) // newest first
	s.render(w, r, code, "node", "Node "+n.Name(), "nodes", nodeData{Status: n.Status(), History: hist, Error: msg})
}

// uiNodeControl applies a control posted by the node page's forms, then
// shows the node again (with the error, when the control failed).
func (s *Server) uiNodeControl(action string) func(http.ResponseWriter, *http.Request, *nodes.Node) {
	return func(w http.ResponseWriter, r *http.Request, n *nodes.Node) {
		sess, _ := sessionOf(r.Context())
		req := NodeControlRequest{Reason: r.PostFormValue("reason"), Fingerprint: r.PostFormValue("fingerprint")}
		if err := s.controlNode(n, action, req, sess.who.Name); err != nil {
			code := http.StatusInternalServerError
			switch {
			case errors.Is(err, errBadControl):
				code = http.StatusBadRequest
			case errors.Is(err, nodes.ErrNotConnected), errors.Is(err, nodes.ErrAlreadyUp), errors.Is(err, nodes.ErrNotDrained), errors.Is(err, nodes.ErrDrained):
				code = http.StatusConflict
			}
			s.renderNode(w, r, code, n, strings.TrimPrefix(err.Error(), errBadControl.Error()+"\n"))
			return
		}
		http.Redirect(w, r, "/ui/nodes/"+url.PathEscape(n.Name()), http.StatusSeeOther)
	}
}

// uiNodeRoutes registers the node page and its controls.
func (s *Server) uiNodeRoutes(rt router) {
	rt.handleUI("GET /ui/nodes/{node}", read, s.uiWithNode(s.uiNode))
	for _, action := range []string{nodes.ActionDrain, nodes.ActionOnline, nodes.ActionDisconnect, nodes.ActionLaunch, nodes.ActionApproveKey} {
		rt.handleUI("POST /ui/nodes/{node}/"+action, admin, s.uiWithNode(s.uiNodeControl(action)))
	}
}

// uiWithNode finds the configured node of the path, or shows the error
// page.
func (s *Server) uiWithNode(h func(http.ResponseWriter, *http.Request, *nodes.Node)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		n := s.nodes.Get(r.PathValue("node"))
		if n == nil {
			s.uiError(w, r, http.StatusNotFound, "no such node: "+r.PathValue("node"))
			return
		}
		h(w, r, n)
	}
}
