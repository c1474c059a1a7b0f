package wire

import (
	"slices"
	"strings"
)

// Features are what an agent announces it understands beyond the frames
// every agent of protocol version 1 handles. The Hello has no field for
// them (its strict encoding would make older masters drop a Hello with
// one more field), so they travel at the end of Hello.AgentVersion:
// "0.3.1 features=collect,stdin". An older master shows that string as
// the agent's version; a newer master sends a frame an agent needs a
// feature for only to agents that announce it. An older agent would drop
// such a frame as undecodable without handling its number, and every
// frame after it would wait in vain for it.
const (
	// FeatureCollect: the agent handles Collect (sends files as
	// FileChunk frames).
	FeatureCollect = "collect"
	// FeatureStdin: the agent feeds Stdin frames to a step's standard
	// input.
	FeatureStdin = "stdin"
	// FeatureShell: the agent runs a step under RunStep.Shell. A master
	// sends a RunStep with a Shell only to an agent announcing it; to
	// another, such a step fails saying the agent predates it, rather than
	// running under /bin/sh.
	FeatureShell = "shell"
	// FeatureStats: announced by the master, not the agent, at the end of
	// an accepting AuthResult's Reason (" features=stats", which older
	// agents ignore): the master takes Stats frames. An agent sends them
	// only to a master that announced it: an older master would count
	// each as malformed.
	FeatureStats = "stats"
)

// featuresMark separates the version from the features.
const featuresMark = " features="

// VersionWithFeatures returns the Hello.AgentVersion announcing features
// after version.
func VersionWithFeatures(version string, features ...string) string {
	if len(features) == 0 {
		return version
	}
	return version + featuresMark + strings.Join(features, ",")
}

// SplitFeatures splits a Hello.AgentVersion into the version and the
// features it announces (none for an agent that announces none).
func SplitFeatures(agentVersion string) (version string, features []string) {
	i := strings.LastIndex(agentVersion, featuresMark)
	if i < 0 {
		return agentVersion, nil
	}
	for f := range strings.SplitSeq(agentVersion[i+len(featuresMark):], ",") {
		if f != "" && !slices.Contains(features, f) {
			features = append(features, f)
		}
	}
	return agentVersion[:i], features
}
