package wire

import (
	"crypto/hmac"
	"crypto/sha256"
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
