package pluginrt

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// StatusErr turns a gRPC status from a plugin into a plain error carrying
// the plugin's message; context errors come back as context.Canceled and
// context.DeadlineExceeded, and errors that are no status (io.EOF) pass
// through unchanged.
func StatusErr(err error) error {
	s, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch s.Code() {
	case codes.Canceled:
		return context.Canceled
	case codes.DeadlineExceeded:
		return context.DeadlineExceeded
	}
	return errors.New(s.Message())
}
