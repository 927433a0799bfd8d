package apierr

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/chunkbridge/chunkbridge/storage"
)

// Every row survives the trip to a status and back, with its message.
func TestTableBothWays(t *testing.T) {
	seen := map[codes.Code]bool{}
	for _, row := range table {
		if seen[row.code] {
			t.Fatalf("code %s appears twice in the table", row.code)
		}
		seen[row.code] = true
		sent := fmt.Errorf("chunk 00ff: %w", row.err)
		if got := Code(sent); got != row.code {
			t.Errorf("Code(%v) = %s, want %s", sent, got, row.code)
		}
		st := Status(sent)
		if status.Code(st) != row.code {
			t.Errorf("Status(%v) has code %s, want %s", sent, status.Code(st), row.code)
		}
		back := FromStatus(st)
		if !errors.Is(back, row.err) {
			t.Errorf("FromStatus(%v) = %v, not %v", st, back, row.err)
		}
		if back.Error() != sent.Error() {
			t.Errorf("message %q came back as %q", sent.Error(), back.Error())
		}
		if Code(back) != row.code {
			t.Errorf("Code of the returned error = %s, want %s", Code(back), row.code)
		}
		item := FromCode(int32(row.code), sent.Error())
		if !errors.Is(item, row.err) || item.Error() != sent.Error() {
			t.Errorf("FromCode(%s) = %v", row.code, item)
		}
	}
}

// Refinements map to their parent's code and come back as the parent.
func TestRefinements(t *testing.T) {
	for _, c := range []struct {
		err    error
		code   codes.Code
		parent error
	}{
		{ErrDigestMismatch, codes.DataLoss, ErrDataLoss},
		{ErrCorrupt, codes.DataLoss, ErrDataLoss},
		{ErrMissingChunks, codes.FailedPrecondition, ErrFailedPrecondition},
		{ErrQuota, codes.ResourceExhausted, ErrExhausted},
		{storage.ErrNotFound, codes.NotFound, ErrNotFound},
		{storage.ErrUnavailable, codes.Unavailable, ErrUnavailable},
		{storage.ErrInvalidKey, codes.InvalidArgument, ErrInvalid},
		{storage.ErrPermission, codes.Internal, ErrInternal},
	} {
		wrapped := fmt.Errorf("index x: %w", c.err)
		if Code(wrapped) != c.code {
			t.Errorf("Code(%v) = %s, want %s", wrapped, Code(wrapped), c.code)
		}
		if back := FromStatus(Status(wrapped)); !errors.Is(back, c.parent) {
			t.Errorf("%v came back as %v, not %v", c.err, back, c.parent)
		}
	}
}

// A quota refusal comes back as itself, through a status and through a
// per-item code, and a budget refusal of the same code does not.
func TestQuotaCrossesGRPC(t *testing.T) {
	quota := fmt.Errorf("put index x: %w: tenant a: over its quota", ErrQuota)
	for _, back := range []error{FromStatus(Status(quota)), FromCode(int32(Code(quota)), quota.Error())} {
		if !errors.Is(back, ErrQuota) || !errors.Is(back, ErrExhausted) || back.Error() != quota.Error() {
			t.Errorf("quota refusal came back as %v", back)
		}
	}
	busy := fmt.Errorf("%w: 64 connections, the most a listener takes", ErrExhausted)
	if back := FromStatus(Status(busy)); errors.Is(back, ErrQuota) || !errors.Is(back, ErrExhausted) {
		t.Errorf("budget refusal came back as %v", back)
	}
}

func TestPassThrough(t *testing.T) {
	if Code(nil) != codes.OK || Status(nil) != nil || FromStatus(nil) != nil || FromCode(0, "x") != nil {
		t.Fatal("nil must stay nil")
	}
	if Code(errors.New("boom")) != codes.Internal {
		t.Error("an unknown error is Internal")
	}
	// The caller's own cancellation is not a service's answer.
	if err := FromStatus(context.Canceled); err != context.Canceled {
		t.Errorf("FromStatus(context.Canceled) = %v", err)
	}
	// A status from another service keeps its code through a gateway.
	st := status.Error(codes.PermissionDenied, "tenant a may not read b")
	if Code(fmt.Errorf("index y: %w", FromStatus(st))) != codes.PermissionDenied {
		t.Error("a wrapped *Error lost its code")
	}
	// An unknown code is still an error, and Internal's sentinel.
	if err := FromCode(999, ""); err == nil || !errors.Is(err, ErrInternal) {
		t.Errorf("FromCode(999) = %v", err)
	}
}
