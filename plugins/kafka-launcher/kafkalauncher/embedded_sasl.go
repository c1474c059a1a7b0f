package kafkalauncher

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkatransport"
)

// embeddedAdminUser is the embedded broker's own superuser, with which the
// plugin installs and removes the agents' ACLs. Its password is drawn at
// every start and never leaves the plugin process. The name is no node
// name (userNameRE refuses a leading '_'), so no configured user can take
// it.
const embeddedAdminUser = "_conveyor-embedded-admin"

// newAdminSASL returns the embedded broker's own superuser with a fresh
// random password (256 bits), in SCRAM-SHA-512, which never sends it.
func newAdminSASL() (*kafkatransport.SASL, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("embedded broker: draw its administrator's password: %w", err)
	}
	return &kafkatransport.SASL{Mechanism: kafkatransport.MechanismSCRAMSHA512, Username: embeddedAdminUser, Password: base64.RawStdEncoding.EncodeToString(b)}, nil
}

// plainGuard checks every SASL/PLAIN login before the embedded broker sees
// it. kfake compares a PLAIN password with its table's entry for the user,
// which for a user it does not know is "": without the guard, anyone who
// reaches the broker logs in under any name (the master's, a superuser's)
// with an empty password as soon as one PLAIN user exists. The guard lets
// a PLAIN login through only for a user it knows, with that user's
// password, which is never empty; it answers everything else with
// SaslAuthenticationFailed, so the client learns that its credentials were
// refused. SCRAM logins pass untouched: kfake refuses unknown SCRAM users
// itself.
type plainGuard struct {
	mu    sync.Mutex
	users map[string]string // PLAIN user => password
}

// newPlainGuard returns a guard that admits the PLAIN users of users (user
// => password); users with an empty password are left out.
func newPlainGuard(users map[string]string) *plainGuard {
	g := &plainGuard{users: map[string]string{}}
	for u, p := range users {
		if p != "" {
			g.users[u] = p
		}
	}
	return g
}

// admits reports whether user may log in with PLAIN password pass.
func (g *plainGuard) admits(user, pass string) bool {
	g.mu.Lock()
	want, ok := g.users[user]
	g.mu.Unlock()
	if !ok {
		// Compare anyway, so the answer takes as long for an unknown user.
		want = "\x00unknown user"
	}
	return subtle.ConstantTimeCompare([]byte(want), []byte(pass)) == 1 && ok && pass != ""
}

// revoke stops user's PLAIN logins (kfake has no way to delete a PLAIN
// user); it reports whether the guard knew the user.
func (g *plainGuard) revoke(user string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.users[user]
	delete(g.users, user)
	return ok
}

// install makes the guard check every SASLAuthenticate request that c
// receives.
func (g *plainGuard) install(c *kfake.Cluster) {
	c.ControlKey(int16(kmsg.SASLAuthenticate), func(req kmsg.Request) (kmsg.Response, error, bool) {
		r, ok := req.(*kmsg.SASLAuthenticateRequest)
		if !ok {
			return nil, nil, false
		}
		user, pass, ok := splitPlain(r.SASLAuthBytes)
		if !ok || g.admits(user, pass) {
			// No PLAIN message (a SCRAM step: kfake checks it), or a
			// known user with the password: kfake goes on.
			return nil, nil, false
		}
		c.KeepControl()
		resp := r.ResponseKind().(*kmsg.SASLAuthenticateResponse)
		resp.ErrorCode = kerr.SaslAuthenticationFailed.Code
		msg := "authentication failed: unknown user or wrong password"
		resp.ErrorMessage = &msg
		return resp, nil, true
	})
}

// splitPlain parses a SASL/PLAIN message (RFC 4616: authzid NUL user NUL
// password) as kfake does: every message kfake would take as PLAIN, this
// takes too, so none reaches kfake unchecked. A message kfake would refuse
// (an authzid other than the user) is refused here as well.
func splitPlain(b []byte) (user, pass string, ok bool) {
	parts := strings.SplitN(string(b), "\x00", 3)
	if len(parts) != 3 {
		return "", "", false
	}
	if parts[0] != "" && parts[0] != parts[1] {
		return parts[1], "", true
	}
	return parts[1], parts[2], true
}
