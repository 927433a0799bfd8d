// Package apierr holds the errors the services return and the one table
// that turns them into gRPC status codes and back.
//
// Services wrap these sentinels (and storage's) with what failed; Status
// turns the chain into a status at the gRPC edge, the way etcd's
// togRPCError does: context errors pass through, known errors map to their
// code, anything else is Internal. Callers of the services (the typed
// client every gateway and the CLI use) turn a status or a per-item code
// back into an error with FromStatus and FromCode, so that errors.Is works
// across the process boundary: errors.Is(err, ErrNotFound) means the same
// on both sides of gRPC. The table is tested in both directions.
package apierr

import (
	"context"
	"errors"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/chunkbridge/chunkbridge/storage"
)

// kind is a sentinel that may refine another: ErrDigestMismatch is a kind
// of ErrDataLoss, so it maps to DataLoss, and a caller who got DataLoss
// back over gRPC tests for ErrDataLoss.
type kind struct {
	msg    string
	parent error
}

func (k *kind) Error() string { return k.msg }
func (k *kind) Unwrap() error { return k.parent }

// The errors of the services. Each of the first group is one row of the
// code table; the refinements below map to their parent's code.
var (
	// ErrInvalid: the request is malformed (bad id, unknown algorithm or
	// encoding, corrupt compressed payload, too large).
	ErrInvalid = errors.New("invalid argument")
	// ErrNotFound: the named thing does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists: the named thing exists and may not be replaced.
	ErrExists = errors.New("already exists")
	// ErrFailedPrecondition: the system is not in the state the operation
	// needs: chunks missing (refined by ErrMissingChunks).
	ErrFailedPrecondition = errors.New("failed precondition")
	// ErrBusy: a conflicting operation is running (a second garbage
	// collection); retry once it has finished.
	ErrBusy = errors.New("busy")
	// ErrExhausted: a budget or quota is used up (too many connections,
	// open files or bytes in flight); retry later or with less at once.
	ErrExhausted = errors.New("resource exhausted")
	// ErrDataLoss: data does not hash to its id, or stored data is damaged.
	ErrDataLoss = errors.New("data loss")
	// ErrUnavailable: the storage (or a service) cannot be reached; retry.
	ErrUnavailable = errors.New("unavailable")
	// ErrPermission: the caller may not do this.
	ErrPermission = errors.New("permission denied")
	// ErrUnauthenticated: the caller did not say who it is, or not validly.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrInternal: a fault of the service; the message says which.
	ErrInternal = errors.New("internal error")

	// ErrDigestMismatch: the data does not hash to the id it was sent with,
	// or stored data no longer hashes to its id.
	ErrDigestMismatch error = &kind{"digest mismatch", ErrDataLoss}
	// ErrCorrupt: stored data (an index, a snapshot file) does not parse.
	ErrCorrupt error = &kind{"stored data is corrupt", ErrDataLoss}
	// ErrMissingChunks: an index or snapshot references chunks the store
	// lacks; the client must upload them first.
	ErrMissingChunks error = &kind{"missing chunks", ErrFailedPrecondition}
	// ErrQuota: a tenant's quota would be exceeded; unlike the budgets of
	// ErrExhausted, retrying does not help until usage or quota change.
	// Its text, "quota exceeded: …", is how it crosses gRPC (a per-item
	// code has no room for details): see Error.Unwrap.
	ErrQuota error = &kind{quotaText, ErrExhausted}
)

const quotaText = "quota exceeded"

// table is the one mapping between errors and codes, both ways.
var table = []struct {
	code codes.Code
	err  error
}{
	{codes.Canceled, context.Canceled},
	{codes.DeadlineExceeded, context.DeadlineExceeded},
	{codes.InvalidArgument, ErrInvalid},
	{codes.NotFound, ErrNotFound},
	{codes.AlreadyExists, ErrExists},
	{codes.FailedPrecondition, ErrFailedPrecondition},
	{codes.Aborted, ErrBusy},
	{codes.ResourceExhausted, ErrExhausted},
	{codes.DataLoss, ErrDataLoss},
	{codes.Unavailable, ErrUnavailable},
	{codes.PermissionDenied, ErrPermission},
	{codes.Unauthenticated, ErrUnauthenticated},
	{codes.Internal, ErrInternal},
}

// storageTable maps the storage layer's errors, which the services wrap.
var storageTable = []struct {
	code codes.Code
	err  error
}{
	{codes.InvalidArgument, storage.ErrInvalidKey},
	{codes.NotFound, storage.ErrNotFound},
	{codes.Unavailable, storage.ErrUnavailable},
	// The service's own credentials were refused (or its directory is
	// read-only): an operator problem, not the caller's, and not fixed by
	// retrying. Not FailedPrecondition, which callers read as "upload the
	// missing chunks first" (HTTP 409).
	{codes.Internal, storage.ErrPermission},
}

// Code classifies err.
func Code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	// A status (from another service, or FromStatus) keeps its code.
	var st interface{ GRPCStatus() *status.Status }
	if errors.As(err, &st) {
		if c := st.GRPCStatus().Code(); c != codes.Unknown {
			return c
		}
	}
	for _, row := range table {
		if errors.Is(err, row.err) {
			return row.code
		}
	}
	for _, row := range storageTable {
		if errors.Is(err, row.err) {
			return row.code
		}
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
		if _, isStatus := err.(interface{ GRPCStatus() *status.Status }); isStatus {
			return err
		}
		return status.Error(s.Code(), err.Error())
	}
	return status.Error(Code(err), err.Error())
}

// Error is a service's error on the caller's side: the message the service
// wrote (which names what failed), and the sentinel of its code, so that
// errors.Is(err, ErrNotFound) holds.
type Error struct {
	code codes.Code
	msg  string
}

func (e *Error) Error() string { return e.msg }

// Code is the gRPC code the service answered.
func (e *Error) Code() codes.Code { return e.code }

// Unwrap is the sentinel of the code, or the refinement its text names.
func (e *Error) Unwrap() error {
	if e.code == codes.ResourceExhausted && strings.Contains(e.msg, quotaText+": ") {
		return ErrQuota
	}
	return sentinel(e.code)
}

// GRPCStatus lets a gateway pass the error on with its code unchanged.
func (e *Error) GRPCStatus() *status.Status { return status.New(e.code, e.msg) }

func sentinel(c codes.Code) error {
	for _, row := range table {
		if row.code == c {
			return row.err
		}
	}
	return ErrInternal
}

// FromCode is the error for a per-item code and message (an upload's
// acknowledgement, a download's item); nil for OK.
func FromCode(code int32, msg string) error {
	c := codes.Code(code)
	if c == codes.OK {
		return nil
	}
	if msg == "" {
		msg = c.String()
	}
	return &Error{code: c, msg: msg}
}

// FromStatus turns an error from a gRPC call into an *Error; errors that
// are not statuses (a context error of the caller's own) pass unchanged.
func FromStatus(err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	s, ok := status.FromError(err)
	if !ok {
		return err
	}
	return &Error{code: s.Code(), msg: s.Message()}
}
