package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/chunkbridge/chunkbridge/storage"
	"github.com/chunkbridge/chunkbridge/storage/fs"
	"github.com/chunkbridge/chunkbridge/storage/s3"
)

type storeFlags struct {
	store      string
	s3Endpoint string
	s3Region   string
	s3Insecure bool
}

// openStore opens --store: a directory, or s3://bucket[/prefix]. It fails
// with the reason when the store cannot be used.
func openStore(ctx context.Context, f storeFlags) (storage.Store, error) {
	switch {
	case strings.HasPrefix(f.store, "s3://"):
		bucket, prefix, err := s3.ParseURL(f.store)
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		s, err := s3.Open(ctx, s3.Config{
			Endpoint: f.s3Endpoint, Bucket: bucket, Prefix: prefix, Region: f.s3Region, Insecure: f.s3Insecure,
		})
		if err != nil {
			return nil, fmt.Errorf("--store %s: %w (check --s3-endpoint, --s3-insecure and AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)", f.store, err)
		}
		return s, nil
	case strings.Contains(f.store, "://"):
		return nil, fmt.Errorf("--store %s: unsupported scheme; want a directory or s3://bucket[/prefix]", f.store)
	case f.store == "":
		return nil, fmt.Errorf("--store is empty; want a directory or s3://bucket[/prefix]")
	}
	s, err := fs.Open(f.store)
	if err != nil {
		return nil, fmt.Errorf("--store: %w", err)
	}
	return s, nil
}
