package storage

import (
	"context"
	"io"
	"strings"
)

// Prefixed returns a view of s in which every key is under prefix (which
// must be empty or end in "/"): a tenant's names or a dedup domain's
// chunks. Keys given to and returned by the view are relative to prefix.
// Closing the view does not close s. An empty prefix returns s itself.
func Prefixed(s Store, prefix string) Store {
	if prefix == "" {
		return s
	}
	if !strings.HasSuffix(prefix, "/") {
		panic("storage.Prefixed: prefix " + prefix + " does not end in /")
	}
	return &prefixed{s: s, p: prefix}
}

type prefixed struct {
	s Store
	p string
}

func (v *prefixed) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64, meta Metadata) (bool, error) {
	if err := ValidateKey(key); err != nil {
		return false, err
	}
	return v.s.PutIfAbsent(ctx, v.p+key, r, size, meta)
}

func (v *prefixed) Put(ctx context.Context, key string, r io.Reader, size int64, meta Metadata) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	return v.s.Put(ctx, v.p+key, r, size, meta)
}

func (v *prefixed) Get(ctx context.Context, key string) (io.ReadCloser, Info, error) {
	if err := ValidateKey(key); err != nil {
		return nil, Info{}, err
	}
	rc, info, err := v.s.Get(ctx, v.p+key)
	info.Key = strings.TrimPrefix(info.Key, v.p)
	return rc, info, err
}

func (v *prefixed) Stat(ctx context.Context, key string) (Info, error) {
	if err := ValidateKey(key); err != nil {
		return Info{}, err
	}
	info, err := v.s.Stat(ctx, v.p+key)
	info.Key = strings.TrimPrefix(info.Key, v.p)
	return info, err
}

func (v *prefixed) Delete(ctx context.Context, key string) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	return v.s.Delete(ctx, v.p+key)
}

func (v *prefixed) List(ctx context.Context, prefix string, fn func(Info) error) error {
	if err := ValidatePrefix(prefix); err != nil {
		return err
	}
	return v.s.List(ctx, v.p+prefix, v.strip(fn))
}

// ListWithMetadata passes through to s's where it has one; otherwise it
// lists without metadata, which MetadataLister's contract allows (the
// caller falls back to Stat).
func (v *prefixed) ListWithMetadata(ctx context.Context, prefix string, fn func(Info) error) error {
	if err := ValidatePrefix(prefix); err != nil {
		return err
	}
	if ml, ok := v.s.(MetadataLister); ok {
		return ml.ListWithMetadata(ctx, v.p+prefix, v.strip(fn))
	}
	return v.s.List(ctx, v.p+prefix, v.strip(fn))
}

func (v *prefixed) strip(fn func(Info) error) func(Info) error {
	return func(i Info) error {
		i.Key = strings.TrimPrefix(i.Key, v.p)
		return fn(i)
	}
}

func (v *prefixed) DeleteBatch(ctx context.Context, keys []string) error {
	full := make([]string, len(keys))
	for i, k := range keys {
		if err := ValidateKey(k); err != nil {
			return err
		}
		full[i] = v.p + k
	}
	return DeleteBatch(ctx, v.s, full)
}

func (v *prefixed) Open(ctx context.Context, key string) (io.ReadCloser, int64, error) {
	if err := ValidateKey(key); err != nil {
		return nil, 0, err
	}
	return Open(ctx, v.s, v.p+key)
}

// Close does nothing: the view does not own s.
func (v *prefixed) Close() error { return nil }
