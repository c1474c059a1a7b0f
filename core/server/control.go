package server

import (
	"encoding/json"
	"errors"
	"net/http"
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
			if err := s.controlNode(r, n, action, req); err != nil {
				writeControlError(w, err)
				return
			}
			writeJSON(w, http.StatusOK, n.Status())
		}))
	}
}

// errBadControl is a control request that cannot be honoured as written.
var errBadControl = errors.New("bad request")

// controlNode applies one control to n on behalf of the request's caller.
func (s *Server) controlNode(r *http.Request, n *nodes.Node, action string, req NodeControlRequest) error {
	by, _ := identityOf(r.Context())
	reason := strings.TrimSpace(req.Reason)
	if len(reason) > maxReason {
		return errors.Join(errBadControl, errors.New("the reason is longer than 1024 bytes"))
	}
	switch action {
	case nodes.ActionDrain:
		return s.nodes.Drain(n, by.Name, reason)
	case nodes.ActionOnline:
		return s.nodes.Online(n, by.Name)
	case nodes.ActionDisconnect:
		return s.nodes.Disconnect(n, by.Name, reason)
	case nodes.ActionLaunch:
		return s.nodes.Launch(n, by.Name)
	case nodes.ActionApproveKey:
		if err := s.nodes.ApproveKey(n, by.Name, strings.TrimSpace(req.Fingerprint)); err != nil {
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
