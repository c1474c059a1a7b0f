package wire

import (
	"reflect"
	"testing"
)

func TestFeatures(t *testing.T) {
	tests := []struct {
		in       string
		version  string
		features []string
	}{
		{"0.1.0", "0.1.0", nil},
		{"", "", nil},
		{"0.1.0 features=collect,stdin", "0.1.0", []string{"collect", "stdin"}},
		{"0.1.0 features=", "0.1.0", nil},
		{"1.2 features=stdin,,stdin", "1.2", []string{"stdin"}},
		{"a features=x b features=collect", "a features=x b", []string{"collect"}},
	}
	for _, tt := range tests {
		v, f := SplitFeatures(tt.in)
		if v != tt.version || !reflect.DeepEqual(f, tt.features) {
			t.Errorf("SplitFeatures(%q) = %q, %q; want %q, %q", tt.in, v, f, tt.version, tt.features)
		}
	}
	s := VersionWithFeatures("0.2.0", FeatureCollect, FeatureStdin)
	if v, f := SplitFeatures(s); v != "0.2.0" || !reflect.DeepEqual(f, []string{FeatureCollect, FeatureStdin}) {
		t.Errorf("round trip of %q: %q %q", s, v, f)
	}
	if VersionWithFeatures("0.2.0") != "0.2.0" {
		t.Error("no features must leave the version alone")
	}
}
