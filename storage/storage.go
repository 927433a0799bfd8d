// Package storage defines the blob store that chunkbridge keeps chunks,
// indexes and snapshots in, and the errors every implementation returns.
//
// Implementations live in sub-packages (fs, s3, memory) and all pass the one
// conformance suite in storage/storagetest. Nothing above this package knows
// which one it talks to.
package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// Store is a flat namespace of immutable-by-convention objects addressed by
// slash-separated keys such as "chunks/1a2b/1a2b….cacnk".
//
// Writes are atomic: a reader sees either no object or the whole object,
// never a partial one, whatever happens to the writer.
type Store interface {
	// PutIfAbsent stores size bytes from r under key unless an object already
	// exists there. It reports created=false, and changes nothing, when the
	// key was already present. Concurrent calls for one key all succeed and
	// exactly one of them reports created=true.
	PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64, meta Metadata) (created bool, err error)
	// Put stores size bytes from r under key, replacing any object there.
	Put(ctx context.Context, key string, r io.Reader, size int64, meta Metadata) error
	// Get opens the object under key. The caller closes the reader.
	Get(ctx context.Context, key string) (io.ReadCloser, Info, error)
	// Stat describes the object under key.
	Stat(ctx context.Context, key string) (Info, error)
	// Delete removes the object under key. Deleting a missing key is not an
	// error.
	Delete(ctx context.Context, key string) error
	// List calls fn for every object whose key starts with prefix, in
	// lexical key order. Info.Metadata is not filled in. fn returning an
	// error stops the listing and List returns that error.
	List(ctx context.Context, prefix string, fn func(Info) error) error
	// Close releases the store's resources.
	Close() error
}

// Metadata is small string data kept with an object (S3 user metadata,
// extended attributes on a file system). Keys are lowercase ASCII words.
type Metadata map[string]string

// Info describes a stored object.
type Info struct {
	Key      string
	Size     int64
	Modified time.Time
	Metadata Metadata
}

// Errors returned by every Store, possibly wrapped; test with errors.Is.
var (
	// ErrNotFound: no object under the key.
	ErrNotFound = errors.New("object not found")
	// ErrInvalidKey: the key is empty, absolute, or escapes its folder.
	ErrInvalidKey = errors.New("invalid object key")
	// ErrUnavailable: the backend cannot be reached or refused service for
	// a reason that may pass (network, 5xx, SlowDown). Worth retrying.
	ErrUnavailable = errors.New("storage unavailable")
	// ErrPermission: the backend refused the credentials or the request.
	ErrPermission = errors.New("storage permission denied")
	// ErrSizeMismatch: the reader did not yield the announced size.
	ErrSizeMismatch = errors.New("object size mismatch")
)

// ValidateKey checks that key is a clean, relative, slash-separated path
// with no empty, "." or ".." segments: the same rules on every backend so a
// key that works on S3 also works on a file system.
func ValidateKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty", ErrInvalidKey)
	}
	if len(key) > 900 {
		return fmt.Errorf("%w: %d bytes long, more than 900", ErrInvalidKey, len(key))
	}
	for _, seg := range strings.Split(key, "/") {
		switch seg {
		case "":
			return fmt.Errorf("%w: %q has an empty segment", ErrInvalidKey, key)
		case ".", "..":
			return fmt.Errorf("%w: %q has a %q segment", ErrInvalidKey, key, seg)
		}
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c < 0x20 || c == 0x7f || c == '\\' {
			return fmt.Errorf("%w: %q contains byte 0x%02x", ErrInvalidKey, key, c)
		}
	}
	return nil
}

// ValidatePrefix checks a listing prefix: empty, or a key-like string that
// may end in "/".
func ValidatePrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	return ValidateKey(strings.TrimSuffix(prefix, "/"))
}

// BatchDeleter is implemented by stores that remove many objects in one
// request (S3 DeleteObjects). Use DeleteBatch, which falls back to Delete.
type BatchDeleter interface {
	// DeleteBatch removes the objects under keys; a missing key is not an
	// error. On error some of the objects may be gone and others not; the
	// error names the keys that could not be deleted.
	DeleteBatch(ctx context.Context, keys []string) error
}

// DeleteBatch removes keys from s, in one or a few requests when s is a
// BatchDeleter and one Delete at a time otherwise. A missing key is not an
// error.
func DeleteBatch(ctx context.Context, s Store, keys []string) error {
	if b, ok := s.(BatchDeleter); ok {
		return b.DeleteBatch(ctx, keys)
	}
	for _, k := range keys {
		if err := s.Delete(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

// MetadataLister is implemented by stores whose listing can carry each
// object's metadata at no extra request (MinIO's ListObjects extension).
type MetadataLister interface {
	// ListWithMetadata is List with Info.Metadata filled in where the
	// backend returned it. Metadata is nil for an object the backend said
	// nothing about (an S3 service without the extension): the caller
	// falls back to Stat.
	ListWithMetadata(ctx context.Context, prefix string, fn func(Info) error) error
}

// Opener is implemented by stores that can open an object's data without
// reading its metadata (the fs store: one open and one fstat, no extended
// attributes). Use Open, which falls back to Get.
type Opener interface {
	// Open opens the object under key and returns its size; the caller
	// closes the reader. Errors are Get's.
	Open(ctx context.Context, key string) (io.ReadCloser, int64, error)
}

// Open opens the object under key in s and returns its size: without its
// metadata where s is an Opener, else through Get. For the fs store the
// reader is the *os.File, so that a copy to a socket can use sendfile.
func Open(ctx context.Context, s Store, key string) (io.ReadCloser, int64, error) {
	if o, ok := s.(Opener); ok {
		return o.Open(ctx, key)
	}
	rc, info, err := s.Get(ctx, key)
	if err != nil {
		return nil, 0, err
	}
	return rc, info.Size, nil
}
