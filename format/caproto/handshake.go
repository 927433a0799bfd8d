package caproto

import "fmt"

// needs pairs each operation bit with the service the peer must offer for
// it (§1.4).
var needs = []struct{ op, service Features }{
	{PullChunks, ReadableStore},
	{PullIndex, ReadableIndex},
	{PullArchive, ReadableArchive},
	{PushChunks, WritableStore},
	{PushIndex, WritableIndex},
	{PushArchive, WritableArchive},
}

// CheckLocal reports whether f is a word casync would agree to send in its
// own HELLO: not 0, no unknown bits, and not both the readable and the
// writable variant of the index or of the archive service.
func (f Features) CheckLocal() error {
	switch {
	case f == 0:
		return fmt.Errorf("%w: local feature word is 0", ErrIncompatible)
	case f&^AllFeatures != 0:
		return fmt.Errorf("%w: local feature word 0x%x has bits outside 0x%x", ErrUnsupportedFeatures, uint64(f), uint64(AllFeatures))
	case f&(ReadableIndex|WritableIndex) == ReadableIndex|WritableIndex:
		return fmt.Errorf("%w: local features %s offer both READABLE_INDEX and WRITABLE_INDEX", ErrIncompatible, f)
	case f&(ReadableArchive|WritableArchive) == ReadableArchive|WritableArchive:
		return fmt.Errorf("%w: local features %s offer both READABLE_ARCHIVE and WRITABLE_ARCHIVE", ErrIncompatible, f)
	}
	return nil
}

// CheckHandshake applies the checks a casync peer makes when it receives
// the remote HELLO while its own is local (§1.4): remote bits must be
// known; PUSH_INDEX_CHUNKS needs PUSH_INDEX and PUSH_CHUNKS; every
// operation either side wants must be served by the other; and at least
// one operation must be wanted. The error wraps ErrIncompatible (EBADE) or
// ErrUnsupportedFeatures (EPROTONOSUPPORT) and names the first rule broken.
func CheckHandshake(local, remote Features) error {
	if remote&^AllFeatures != 0 {
		return fmt.Errorf("%w: remote feature word 0x%x has bits outside 0x%x", ErrUnsupportedFeatures, uint64(remote), uint64(AllFeatures))
	}
	if remote&PushIndexChunks != 0 && remote&(PushIndex|PushChunks) != PushIndex|PushChunks {
		return fmt.Errorf("%w: remote %s sets PUSH_INDEX_CHUNKS without both PUSH_INDEX and PUSH_CHUNKS", ErrIncompatible, remote)
	}
	for _, n := range needs {
		if remote&n.op != 0 && local&n.service == 0 {
			return fmt.Errorf("%w: remote wants %s but local %s does not offer %s", ErrIncompatible, n.op, local, n.service)
		}
		if local&n.op != 0 && remote&n.service == 0 {
			return fmt.Errorf("%w: local wants %s but remote %s does not offer %s", ErrIncompatible, n.op, remote, n.service)
		}
	}
	if (local|remote)&Operations == 0 {
		return fmt.Errorf("%w: neither local %s nor remote %s wants any operation", ErrIncompatible, local, remote)
	}
	return nil
}
