package launcher

import (
	"errors"
	"time"
)

// PermanentRetry is how often the host asks again for a node whose launch
// failed with a Permanent error.
const PermanentRetry = time.Minute

// Permanent marks err, returned by Launch, as a failure that launching
// again cannot fix until the node's configuration, or the material it
// names (a key file, a known_hosts file), changes: refused credentials, a
// refused host key. It crosses the plugin boundary: the host's Launch
// returns an error for which IsPermanent holds, with err's message.
//
// The host then stops relaunching the node on its backoff and shows err as
// the node's reason (the node stays offline while it asks again: its state,
// since and log change only when the answer does); it asks again at most
// once every PermanentRetry, so
// that a corrected known_hosts file is picked up without a restart. A
// launcher answers such a repeated Launch from memory, without contacting
// the machine again, while nothing it depends on changed (the SSH launcher
// does: a refused password retried every minute gets the master banned by
// fail2ban). A nil err stays nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

// IsPermanent reports whether err, or an error it wraps, was marked with
// Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// ApprovalPending marks err, returned by Launch, as a launch that waits
// for an operator to approve the host key whose SHA256 fingerprint
// ("SHA256:...") it names; it is Permanent. It crosses the plugin
// boundary: the host's Launch returns an error for which PendingApproval
// returns the fingerprint. The host shows the fingerprint for approval,
// keeps the approved ones and passes them on every later launch in
// Node.ApprovedKeys.
func ApprovalPending(fingerprint string, err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{&pendingError{fingerprint: fingerprint, err: err}}
}

// PendingApproval returns the host key fingerprint that err (or an error
// it wraps, marked with ApprovalPending) waits to have approved.
func PendingApproval(err error) (string, bool) {
	var p *pendingError
	if errors.As(err, &p) {
		return p.fingerprint, true
	}
	return "", false
}

type pendingError struct {
	fingerprint string
	err         error
}

func (e *pendingError) Error() string { return e.err.Error() }
func (e *pendingError) Unwrap() error { return e.err }
