package pmxclient

import (
	"errors"
	"fmt"
	"net"

	"github.com/chunkbridge/chunkbridge/format/pmxproto"
)

var (
	// ErrNotFound is wrapped by HashList's error when the server answers
	// Error(Generic): there is no such snapshot file. A backup then falls
	// back to a full backup.
	ErrNotFound = errors.New("pmx: no such snapshot file")
	// ErrBusy is wrapped by the error of a request the server answered
	// with Error(Busy), e.g. a second hash list while one is streaming.
	ErrBusy = errors.New("pmx: server busy")
	// ErrTLSRefused is wrapped by Dial's error when the server ended the
	// TLS handshake with an alert, e.g. because it did not accept the
	// client certificate (a gateway with access control verifies it
	// against its client CA).
	ErrTLSRefused = errors.New("pmx: the server refused the TLS handshake")
)

// tlsRefused wraps err with ErrTLSRefused if it is a TLS alert from the
// server; with TLS 1.3 that alert arrives after the client's side of the
// handshake, as the first read fails.
func tlsRefused(addr string, err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "remote error" {
		return fmt.Errorf("%w: %s: %w; does it want a client certificate signed by its client CA?", ErrTLSRefused, addr, op)
	}
	return nil
}

// ServerError is an Error packet the server sent in answer to a request.
type ServerError struct {
	// Request says what failed, e.g. "UploadChunk of chunk 2cf24d…".
	Request string
	// Code is the packet's ErrorId.
	Code pmxproto.ErrorID
	// Reason is the packet's optional UTF-8 reason; may be empty.
	Reason string

	kind error // a sentinel this error also matches, e.g. ErrNotFound
}

// Error says what was refused, with the code and the reason.
func (e *ServerError) Error() string {
	s := fmt.Sprintf("pmx: server refused %s: error %s", e.Request, e.Code)
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	return s
}

// Is reports whether target is ErrBusy and the code is Busy, or target is
// ErrNotFound and the request was a hash list that failed with Generic.
func (e *ServerError) Is(target error) bool {
	return target == ErrBusy && e.Code == pmxproto.ErrorBusy || target != nil && target == e.kind
}

func serverError(request string, p *pmxproto.Error) *ServerError {
	return &ServerError{Request: request, Code: p.Code, Reason: p.Reason}
}

// unexpected is the protocol error for a reply a request cannot have.
func unexpected(request string, p pmxproto.Packet) error {
	return fmt.Errorf("%s (id %d) answered with %s", request, p.PacketID(), p.PacketType())
}
