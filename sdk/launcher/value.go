package launcher

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/zclconf/go-cty/cty"
	ctyjson "github.com/zclconf/go-cty/cty/json"

	"github.com/conveyor-ci/conveyor/sdk/internal/pluginrt"
)

// Decode decodes a configuration value into target, a pointer to a struct
// whose `json` field tags name the attributes of the block (nested blocks
// decode into nested structs or slices). Unknown attributes are an error.
func Decode(v cty.Value, target any) error {
	if v == cty.NilVal || v.IsNull() {
		return nil
	}
	b, err := ctyjson.Marshal(v, v.Type())
	if err != nil {
		return fmt.Errorf("encode config: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(target); err != nil {
		return fmt.Errorf("decode config: %w", err)
	}
	return nil
}

// marshalValue encodes v with its type so the other side can rebuild it.
func marshalValue(v cty.Value) ([]byte, error) { return pluginrt.MarshalValue(v) }

// unmarshalValue reverses marshalValue.
func unmarshalValue(b []byte) (cty.Value, error) { return pluginrt.UnmarshalValue(b) }
