package pmxproto

import (
	"errors"
	"fmt"
)

// FrameError reports a byte stream that is no longer a sequence of packets: a
// header length below HeaderSize or above the limit, an unknown packet type,
// or a stream that ended or failed inside a packet. The position of the next
// packet is unknown, so the connection must be closed. A Reader returns the
// same FrameError from every later call.
type FrameError struct {
	// Offset is the stream offset of the first header byte of the packet
	// that could not be framed.
	Offset int64
	// HaveHeader reports whether the header was read whole; only then are
	// ID, Type and Length set.
	HaveHeader bool
	ID         uint8  // header id
	Type       Type   // header type
	Length     uint32 // header length, header included
	// Reason says what was wrong, with the offending value.
	Reason string
	// Err is the underlying read error, if any (io.ErrUnexpectedEOF when the
	// stream ended inside a packet).
	Err error
}

func (e *FrameError) Error() string {
	s := fmt.Sprintf("pmx wire: framing error in packet at stream offset %d", e.Offset)
	if e.HaveHeader {
		s += fmt.Sprintf(" (id %d, type %s, length %d)", e.ID, e.Type, e.Length)
	}
	s += ": " + e.Reason
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the underlying read error.
func (e *FrameError) Unwrap() error { return e.Err }

// BodyError reports a well-framed packet whose body is invalid: a wrong size
// for its type, a length field that disagrees with the body, a bad value in a
// field. The whole packet was consumed, so the stream is still in sync and
// the Reader can go on; the sender should be answered with Reply(). Validate
// returns the same type for packets that must not be encoded.
type BodyError struct {
	ID   uint8 // the packet's header id
	Type Type  // the packet's header type
	// Field names the offending field as the protocol calls it, e.g.
	// "name_length", or "body" for the body's size as a whole.
	Field string
	// Offset is the field's byte offset within the body.
	Offset int
	// Reason says what was wrong, with the offending value.
	Reason string
}

func (e *BodyError) Error() string {
	return fmt.Sprintf("pmx wire: %s packet (id %d): %s at body offset %d: %s", e.Type, e.ID, e.Field, e.Offset, e.Reason)
}

// Reply returns the Error packet that answers the offending packet: the
// packet's id, ErrorGeneric, and this error's text as the reason.
func (e *BodyError) Reply() *Error {
	return &Error{ID: e.ID, Code: ErrorGeneric, Reason: e.Error()}
}

// IsFatal reports whether err, returned by a Reader, means the connection
// must be closed: true for every non-nil error except a *BodyError. A clean
// io.EOF between packets is fatal too, in that the stream has ended.
func IsFatal(err error) bool {
	if err == nil {
		return false
	}
	var be *BodyError
	return !errors.As(err, &be)
}

func bodyErr(id uint8, t Type, field string, off int, format string, args ...any) *BodyError {
	return &BodyError{ID: id, Type: t, Field: field, Offset: off, Reason: fmt.Sprintf(format, args...)}
}
