package wire

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
)

// NonceSize is the length of the handshake nonces.
const NonceSize = 32

// Proof domain separators, so a master proof can never pass as an agent's.
const (
	masterProofLabel = "conveyor-master-v1"
	agentProofLabel  = "conveyor-agent-v1"
)

// MasterProof is the master's proof in a Challenge:
// HMAC-SHA256(secret, "conveyor-master-v1" || nonceAgent || nonceMaster).
func MasterProof(secret, nonceAgent, nonceMaster []byte) []byte {
	return proof(secret, masterProofLabel, nonceAgent, nonceMaster)
}

// AgentProof is the agent's proof in Auth:
// HMAC-SHA256(secret, "conveyor-agent-v1" || nonceMaster || nonceAgent).
func AgentProof(secret, nonceMaster, nonceAgent []byte) []byte {
	return proof(secret, agentProofLabel, nonceMaster, nonceAgent)
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

// SessionKey derives the key that authenticates every frame of a session
// after the handshake: HMAC-SHA256(secret, "conveyor-session-v1" ||
// nonceAgent || nonceMaster || session). Both ends know it once the master
// sent its Challenge; nobody else does without the secret.
func SessionKey(secret, nonceAgent, nonceMaster []byte, session uint64) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(sessionKeyLabel))
	m.Write(nonceAgent)
	m.Write(nonceMaster)
	var id [8]byte
	binary.BigEndian.PutUint64(id[:], session)
	m.Write(id[:])
	return m.Sum(nil)
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
