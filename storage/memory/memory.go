// Package memory is an in-process store for unit tests of the code above
// storage. It is never a deployment option.
package memory

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/chunkbridge/chunkbridge/storage"
)

type object struct {
	data     []byte
	modified time.Time
	meta     storage.Metadata
}

// Store keeps objects in a map.
type Store struct {
	mu      sync.RWMutex
	objects map[string]object
}

var _ storage.Store = (*Store)(nil)

// New returns an empty store.
func New() *Store { return &Store{objects: map[string]object{}} }

func read(ctx context.Context, r io.Reader, size int64) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	n, err := io.Copy(&buf, io.LimitReader(r, size+1))
	if err != nil {
		return nil, err
	}
	if n != size {
		return nil, fmt.Errorf("%w: read %d bytes, expected %d", storage.ErrSizeMismatch, min(n, size+1), size)
	}
	return buf.Bytes(), ctx.Err()
}

// PutIfAbsent stores the object unless the key exists.
func (s *Store) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64, meta storage.Metadata) (bool, error) {
	if err := storage.ValidateKey(key); err != nil {
		return false, err
	}
	data, err := read(ctx, r, size)
	if err != nil {
		return false, fmt.Errorf("put %s: %w", key, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.objects[key]; ok {
		return false, nil
	}
	s.objects[key] = object{data: data, modified: time.Now(), meta: maps.Clone(meta)}
	return true, nil
}

// Put stores the object, replacing any.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, size int64, meta storage.Metadata) error {
	if err := storage.ValidateKey(key); err != nil {
		return err
	}
	data, err := read(ctx, r, size)
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	s.mu.Lock()
	s.objects[key] = object{data: data, modified: time.Now(), meta: maps.Clone(meta)}
	s.mu.Unlock()
	return nil
}

// Get returns a reader over a copy-free view of the object.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, storage.Info, error) {
	info, o, err := s.lookup(ctx, "get", key)
	if err != nil {
		return nil, storage.Info{}, err
	}
	return io.NopCloser(bytes.NewReader(o.data)), info, nil
}

// Stat describes the object.
func (s *Store) Stat(ctx context.Context, key string) (storage.Info, error) {
	info, _, err := s.lookup(ctx, "stat", key)
	return info, err
}

func (s *Store) lookup(ctx context.Context, op, key string) (storage.Info, object, error) {
	if err := storage.ValidateKey(key); err != nil {
		return storage.Info{}, object{}, err
	}
	if err := ctx.Err(); err != nil {
		return storage.Info{}, object{}, err
	}
	s.mu.RLock()
	o, ok := s.objects[key]
	s.mu.RUnlock()
	if !ok {
		return storage.Info{}, object{}, fmt.Errorf("%s %s: %w", op, key, storage.ErrNotFound)
	}
	return storage.Info{Key: key, Size: int64(len(o.data)), Modified: o.modified, Metadata: maps.Clone(o.meta)}, o, nil
}

// Delete removes the object.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := storage.ValidateKey(key); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	delete(s.objects, key)
	s.mu.Unlock()
	return nil
}

// List visits a sorted snapshot of the matching keys.
func (s *Store) List(ctx context.Context, prefix string, fn func(storage.Info) error) error {
	if err := storage.ValidatePrefix(prefix); err != nil {
		return err
	}
	s.mu.RLock()
	var infos []storage.Info
	for k, o := range s.objects {
		if strings.HasPrefix(k, prefix) {
			infos = append(infos, storage.Info{Key: k, Size: int64(len(o.data)), Modified: o.modified})
		}
	}
	s.mu.RUnlock()
	slices.SortFunc(infos, func(a, b storage.Info) int { return strings.Compare(a.Key, b.Key) })
	for _, info := range infos {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// Close does nothing.
func (s *Store) Close() error { return nil }
