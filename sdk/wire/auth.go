package wire

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
)

// NonceSize is the length of the handshake nonces.
const NonceSize = 32

// Proof domain separators, so a master proof can never pass as an agent's.
// The agent's label is at v2 since frame keys are bound to the direction
// (see FrameKey): an agent proving with the v1 label predates them, and
// the master refuses it saying so (LegacyAgentProof).
const (
	masterProofLabel      = "conveyor-master-v1"
	agentProofLabel       = "conveyor-agent-v2"
	legacyAgentProofLabel = "conveyor-agent-v1"
)

// MasterProof is the master's proof in a Challenge:
// HMAC-SHA256(secret, "conveyor-master-v1" || nonceAgent || nonceMaster).
func MasterProof(secret, nonceAgent, nonceMaster []byte) []byte {
	return proof(secret, masterProofLabel, nonceAgent, nonceMaster)
}

// AgentProof is the agent's proof in Auth:
// HMAC-SHA256(secret, "conveyor-agent-v2" || nonceMaster || nonceAgent).
func AgentProof(secret, nonceMaster, nonceAgent []byte) []byte {
	return proof(secret, agentProofLabel, nonceMaster, nonceAgent)
}

// LegacyAgentProof is the proof of an agent that predates direction-bound
// frame keys (label "conveyor-agent-v1"), which signs its frames with the
// session key itself. A master that finds it in an Auth knows an outdated
// agent holding the secret answered, and refuses it saying so: it could
// neither verify that agent's frames nor be verified by it.
func LegacyAgentProof(secret, nonceMaster, nonceAgent []byte) []byte {
	return proof(secret, legacyAgentProofLabel, nonceMaster, nonceAgent)
}

// ProofEqual compares proofs in constant time.
func ProofEqual(a, b []byte) bool { return hmac.Equal(a, b) }

func proof(secret []byte, label string, first, second []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(label))
	m.Write(first)
	m.Write(second)
	return m.Sum(nil)
}

// sessionKeyLabel separates session keys from handshake proofs.
const sessionKeyLabel = "conveyor-session-v1"

// SessionKey derives the root key of a session's epoch:
// HMAC-SHA256(secret, "conveyor-session-v1" || nonceAgent || nonceMaster ||
// session). Both ends know it once the master sent its Challenge; nobody
// else does without the secret. Frames are never signed with it: each
// direction signs with its own key derived from it (FrameKey, Keys).
func SessionKey(secret, nonceAgent, nonceMaster []byte, session uint64) []byte {
	return handshakeKey(secret, sessionKeyLabel, nonceAgent, nonceMaster, session)
}

// refusalKeyLabel separates the key of signed refusals from session keys.
const refusalKeyLabel = "conveyor auth-refusal"

// RefusalKey derives the key that signs the master's refusal
// (AuthResult{OK: false}) of an agent whose Challenge proved the secret:
// HMAC-SHA256(secret, "conveyor auth-refusal" || nonceAgent || nonceMaster
// || session). The MAC (Sign) covers the frame's header and payload, the
// reason included. Such an agent obeys only a refusal that verifies under
// it: anyone who saw the Challenge could inject an unsigned one.
func RefusalKey(secret, nonceAgent, nonceMaster []byte, session uint64) []byte {
	return handshakeKey(secret, refusalKeyLabel, nonceAgent, nonceMaster, session)
}

// handshakeKey is HMAC-SHA256(secret, label || nonceAgent || nonceMaster
// || session as 8 bytes big endian).
func handshakeKey(secret []byte, label string, nonceAgent, nonceMaster []byte, session uint64) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(label))
	m.Write(nonceAgent)
	m.Write(nonceMaster)
	var id [8]byte
	binary.BigEndian.PutUint64(id[:], session)
	m.Write(id[:])
	return m.Sum(nil)
}

// Role is one end of a session: the master or the agent.
type Role uint8

// Roles.
const (
	RoleMaster Role = 1
	RoleAgent  Role = 2
)

// Peer is the other end.
func (r Role) Peer() Role {
	if r == RoleMaster {
		return RoleAgent
	}
	return RoleMaster
}

// String names the role.
func (r Role) String() string {
	switch r {
	case RoleMaster:
		return "master"
	case RoleAgent:
		return "agent"
	}
	return fmt.Sprintf("Role(%d)", uint8(r))
}

// Direction labels of the frame keys.
const (
	masterFramesLabel = "conveyor master->agent"
	agentFramesLabel  = "conveyor agent->master"
)

// FrameKey derives, from an epoch's session key, the key that signs the
// frames sent by from: HMAC-SHA256(sessionKey, "conveyor master->agent")
// for the master's, HMAC-SHA256(sessionKey, "conveyor agent->master") for
// the agent's. A frame signed by one end therefore never verifies at that
// same end: a frame copied from the events topic into the commands topic
// (reflected) is forged for the agent, and the other way round for the
// master. It panics on an invalid role.
func FrameKey(sessionKey []byte, from Role) []byte {
	var label string
	switch from {
	case RoleMaster:
		label = masterFramesLabel
	case RoleAgent:
		label = agentFramesLabel
	default:
		panic(fmt.Sprintf("wire: frame key of %v", from))
	}
	m := hmac.New(sha256.New, sessionKey)
	m.Write([]byte(label))
	return m.Sum(nil)
}

// Keys are the frame keys of an epoch as one end uses them: Send signs
// its frames, Receive verifies its peer's.
type Keys struct {
	Send, Receive []byte
}

// KeysFor returns the frame keys of the end self in the epoch whose
// session key is sessionKey.
func KeysFor(sessionKey []byte, self Role) Keys {
	return Keys{Send: FrameKey(sessionKey, self), Receive: FrameKey(sessionKey, self.Peer())}
}

// Sign sets f.MAC: HMAC-SHA256 under key over f.SignedBytes() (header and
// payload, so neither can be altered).
func Sign(key []byte, f *Frame) {
	m := hmac.New(sha256.New, key)
	m.Write(f.SignedBytes())
	f.MAC = m.Sum(nil)[:MACSize]
}

// Verify reports whether f carries a valid MAC under key.
func Verify(key []byte, f *Frame) bool {
	if len(f.MAC) != MACSize {
		return false
	}
	m := hmac.New(sha256.New, key)
	m.Write(f.SignedBytes())
	return hmac.Equal(m.Sum(nil)[:MACSize], f.MAC)
}
