package casync_test

import (
	"context"
	"fmt"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/chunkbridge/chunkbridge/gateway/casync"
	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/storage"
)

// The errno of a service's error is the same whether the error came over
// gRPC (an apierr.Error with the code) or from the service in this
// process (a wrapped sentinel, or a storage error).
func TestErrnoOfServiceErrors(t *testing.T) {
	for _, tc := range []struct {
		local error
		want  syscall.Errno
	}{
		{apierr.ErrNotFound, syscall.ENOENT},
		{apierr.ErrDigestMismatch, syscall.EBADMSG},
		{apierr.ErrMissingChunks, syscall.EBADMSG},
		{apierr.ErrInvalid, syscall.EBADMSG},
		{apierr.ErrUnavailable, syscall.EIO},
		{storage.ErrUnavailable, syscall.EIO},
		{apierr.ErrPermission, syscall.EACCES},
		{apierr.ErrExhausted, syscall.EAGAIN},
		{context.DeadlineExceeded, syscall.EIO},
	} {
		local := fmt.Errorf("chunk x: %w", tc.local)
		remote := apierr.FromCode(int32(apierr.Code(local)), local.Error())
		for _, err := range []error{local, remote} {
			if got := casync.ErrnoFor(err); got != uint32(tc.want) {
				t.Errorf("%v (%T, code %v): errno %d, want %d", err, err, apierr.Code(err), got, tc.want)
			}
		}
	}
	if got := casync.ErrnoFor(apierr.FromCode(int32(codes.NotFound), "gone")); got != uint32(syscall.ENOENT) {
		t.Errorf("NotFound over gRPC: errno %d", got)
	}
}
