package chunk

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/storage"
)

// A chunk whose stored bytes do not decode, or no longer hash to its id, is
// moved out of chunks/ into quarantine/: the bytes are kept for inspection,
// and the chunk reads as missing, so that existence checks say "missing"
// and the next upload of its data (any protocol ends in Put) stores a good
// copy instead of being skipped as already stored.

// QuarantinePrefix is where quarantined chunks are kept:
// quarantine/chunks/<4 hex>/<64 hex>.<UTC time>.cacnk, with the original
// object's metadata plus why and when (metadata "reason", "quarantined").
// Nothing but an operator deletes them; garbage collection lists only
// chunks/.
const QuarantinePrefix = "quarantine/chunks/"

// quarantineTimeout bounds one quarantine, which runs on even when the
// read that found the damage is cancelled (a client that went away).
const quarantineTimeout = time.Minute

// QuarantinedPrefix is the listing prefix of id's quarantined copies.
func QuarantinedPrefix(id ID) string {
	h := id.String()
	return QuarantinePrefix + h[:4] + "/" + h + "."
}

func quarantineKey(id ID, stored []byte, size int64) string {
	// Named by content: quarantining the same bytes again (a delete that
	// failed, a read racing another) writes nothing new.
	if stored == nil { // too large to hold: named by size only
		return QuarantinedPrefix(id) + "size-" + strconv.FormatInt(size, 10) + ".cacnk"
	}
	sum := sha256.Sum256(stored)
	return QuarantinedPrefix(id) + hex.EncodeToString(sum[:8]) + ".cacnk"
}

// QuarantinedError is a read that found a chunk corrupt and moved it to
// quarantine. It unwraps to the corruption (apierr.ErrDigestMismatch).
type QuarantinedError struct {
	ID  ID
	Key string // the quarantined copy; empty when another read moved it first
	Err error
}

func (e *QuarantinedError) Error() string {
	where := "it was already moved to quarantine"
	if e.Key != "" {
		where = "moved to quarantine as " + e.Key
	}
	return fmt.Sprintf("%v; %s: upload the chunk again (a backup of the same data, or chunkbridge verify --repair-from)", e.Err, where)
}

func (e *QuarantinedError) Unwrap() error { return e.Err }

// errIntact: the re-read before quarantine found the chunk intact.
var errIntact = errors.New("intact on a second read")

// corrupt quarantines id after a read found its stored data corrupt
// (cause wraps apierr.ErrDigestMismatch) and returns the error for the
// reader: a *QuarantinedError, or cause with why quarantine failed, or an
// unavailable error when a second read found the chunk intact (the damage
// was on the way from storage, and a retry will succeed).
func (s *Service) corrupt(ctx context.Context, id ID, cause error) error {
	key, err := s.Quarantine(ctx, id, cause.Error())
	switch {
	case err == nil:
		return &QuarantinedError{ID: id, Key: key, Err: cause}
	case errors.Is(err, errIntact):
		return fmt.Errorf("chunk %s: %w: a read returned corrupt data but a second read was intact (damage in transit?); read it again", id, storage.ErrUnavailable)
	}
	// %v: the reader's error stays the corruption (DATA_LOSS), not the
	// storage error that kept it from quarantine.
	return fmt.Errorf("%w; moving it to quarantine failed (%v): run chunkbridge verify once storage is reachable", cause, err)
}

// Quarantine moves a corrupt chunk to QuarantinePrefix and removes it from
// chunks/, then forgets it in this process's presence cache and announces
// the removal to other replicas. It re-reads the chunk first and quarantines
// only what is still corrupt: a chunk that reads intact is left alone
// (errIntact), and one already gone returns an empty key. Quarantines of
// one id in this process are serialised, so the delete never removes a good
// copy uploaded after another quarantine of the same id here.
func (s *Service) Quarantine(ctx context.Context, id ID, reason string) (string, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), quarantineTimeout)
	defer cancel()
	d, err := s.domains.of(ctx, false)
	if err != nil {
		return "", err
	}
	st := d.store
	mu := &s.quarantineMu[int(id[0])%len(s.quarantineMu)]
	mu.Lock()
	defer mu.Unlock()

	rc, info, err := st.Get(ctx, id.Key())
	if errors.Is(err, storage.ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("re-read chunk %s: %w", id, err)
	}
	defer rc.Close()
	var body io.Reader = rc
	var stored []byte
	if info.Size <= maxStored {
		stored = make([]byte, info.Size)
		if _, err := io.ReadFull(rc, stored); err != nil {
			return "", fmt.Errorf("re-read chunk %s: %w", id, readErr(err))
		}
		if s.intact(id, info.Metadata, stored) {
			return "", fmt.Errorf("chunk %s: %w", id, errIntact)
		}
		body = bytes.NewReader(stored)
	} // else: too large to be any chunk; copied as it streams

	now := time.Now()
	key := quarantineKey(id, stored, info.Size)
	shown := d.prefix + key // the object's name in the store
	meta := storage.Metadata{}
	for k, v := range info.Metadata {
		meta[k] = v
	}
	meta["reason"] = metaText(reason)
	meta["quarantined"] = now.UTC().Format(time.RFC3339Nano)
	if _, err := st.PutIfAbsent(ctx, key, body, info.Size, meta); err != nil {
		return "", fmt.Errorf("copy corrupt chunk %s to %s: %w", id, shown, err)
	}
	// Forgotten before and after the delete, as garbage collection does:
	// no existence answer from before the delete survives it.
	// Only the object that was re-read goes: another replica may have
	// quarantined it meanwhile and a client stored a good copy since.
	if cur, err := st.Stat(ctx, id.Key()); err != nil || cur.Size != info.Size || !cur.Modified.Equal(info.Modified) {
		if err == nil || errors.Is(err, storage.ErrNotFound) {
			return shown, nil
		}
		return "", fmt.Errorf("re-check chunk %s before removing it: %w", id, err)
	}
	s.Forget(id)
	if err := st.Delete(ctx, id.Key()); err != nil {
		return "", fmt.Errorf("remove corrupt chunk %s after copying it to %s: %w", id, shown, err)
	}
	s.Forget(id)
	s.metrics.quarantined.Inc()
	s.log.Warn("corrupt chunk moved to quarantine; the next upload of its data stores a good copy", "chunk", id.String(), "quarantine", shown, "reason", reason)
	if err := s.announceRemoval(ctx, id); err != nil {
		s.log.Warn("telling other replicas that a chunk was quarantined failed: they may answer \"stored\" for it until their next cache reset",
			"chunk", id.String(), "err", err)
	}
	return shown, nil
}

// intact reports whether stored decodes and hashes to id.
func (s *Service) intact(id ID, meta storage.Metadata, stored []byte) bool {
	if meta[metaEncrypted] == "true" {
		return checkStored(id, stored) == nil
	}
	data, err := s.codec.decode(chunkbridgev1.Encoding_ENCODING_ZSTD, stored)
	if err != nil {
		return false
	}
	c := Chunk{Algorithm: parseAlgorithm(meta[metaAlgorithm])}
	return verify(id, &c, data) == nil
}

// metaText keeps printable ASCII (what S3 metadata carries) and bounds the
// length.
func metaText(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '?'
		}
		return r
	}, s)
	if len(s) > 512 {
		s = s[:512]
	}
	return s
}
