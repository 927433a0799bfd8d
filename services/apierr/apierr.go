// Package apierr holds the errors the services return and the one place
// where they become gRPC status codes.
//
// Services wrap these sentinels (and storage's) with what failed; Status
// turns the chain into a status at the gRPC edge, the way etcd's
// togRPCError does: context errors pass through, known errors map to their
// code, anything else is Internal.
package apierr

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/chunkbridge/chunkbridge/storage"
)

var (
	// ErrInvalid: the request is malformed (bad id, unknown algorithm or
	// encoding, corrupt compressed payload, too large).
	ErrInvalid = errors.New("invalid argument")
	// ErrDigestMismatch: the data does not hash to the id it was sent with,
	// or stored data no longer hashes to its id.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrNotFound: the named thing does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists: the named thing exists and may not be replaced.
	ErrExists = errors.New("already exists")
	// ErrMissingChunks: an index or snapshot references chunks the store
	// lacks; the client must upload them first.
	ErrMissingChunks = errors.New("missing chunks")
	// ErrCorrupt: stored data (an index, a snapshot file) does not parse.
	ErrCorrupt = errors.New("stored data is corrupt")
	// ErrBusy: a conflicting operation is running (a second garbage
	// collection); retry once it has finished.
	ErrBusy = errors.New("busy")
)

// Code classifies err.
func Code(err error) codes.Code {
	switch {
	case err == nil:
		return codes.OK
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, ErrDigestMismatch), errors.Is(err, ErrCorrupt):
		return codes.DataLoss
	case errors.Is(err, ErrInvalid), errors.Is(err, storage.ErrInvalidKey):
		return codes.InvalidArgument
	case errors.Is(err, ErrNotFound), errors.Is(err, storage.ErrNotFound):
		return codes.NotFound
	case errors.Is(err, ErrExists):
		return codes.AlreadyExists
	case errors.Is(err, ErrMissingChunks):
		return codes.FailedPrecondition
	case errors.Is(err, ErrBusy):
		return codes.Aborted
	case errors.Is(err, storage.ErrUnavailable):
		return codes.Unavailable
	case errors.Is(err, storage.ErrPermission):
		// The service's own credentials were refused: an operator problem,
		// not the caller's, and not fixed by retrying.
		return codes.FailedPrecondition
	}
	if s, ok := status.FromError(err); ok {
		return s.Code()
	}
	return codes.Internal
}

// Status converts err into a gRPC status error whose message is err's text,
// which names the thing that failed.
func Status(err error) error {
	if err == nil {
		return nil
	}
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
		return err
	}
	return status.Error(Code(err), err.Error())
}
