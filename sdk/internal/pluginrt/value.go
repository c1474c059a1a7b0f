package pluginrt

import (
	"github.com/zclconf/go-cty/cty"
	ctyjson "github.com/zclconf/go-cty/cty/json"
)

// MarshalValue encodes a configuration value with its type so that the
// other side of the plugin boundary can rebuild it.
func MarshalValue(v cty.Value) ([]byte, error) {
	if v == cty.NilVal {
		v = cty.NullVal(cty.DynamicPseudoType)
	}
	return ctyjson.Marshal(v, cty.DynamicPseudoType)
}

// UnmarshalValue reverses MarshalValue.
func UnmarshalValue(b []byte) (cty.Value, error) {
	if len(b) == 0 {
		return cty.NullVal(cty.DynamicPseudoType), nil
	}
	return ctyjson.Unmarshal(b, cty.DynamicPseudoType)
}
