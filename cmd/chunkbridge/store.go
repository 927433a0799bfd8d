package main

import (
	"context"
	"fmt"
	"regexp"
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

// storeForms names the accepted --store forms, for its errors.
const storeForms = "want a directory (./data, /srv/chunks) or s3://BUCKET[/PREFIX]"

// urlLike matches a store that starts like a URL ("s3:/b", "file:x",
// "S3://b"): never meant as a directory name, so refused rather than
// served as one.
var urlLike = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*:(/|$)|^(?i:s3):`)

// openStore opens --store: a directory, or s3://bucket[/prefix]. It fails
// with the reason when the store cannot be used; a --store or
// --s3-endpoint it cannot mean is a usage error.
func openStore(ctx context.Context, f storeFlags) (storage.Store, error) {
	switch {
	case len(f.store) >= 5 && strings.EqualFold(f.store[:5], "s3://"):
		bucket, prefix, err := s3.ParseURL(f.store)
		if err != nil {
			return nil, usagef("--store: %v", err)
		}
		if f.s3Endpoint != "" {
			if _, tls, err := s3.ParseEndpoint(f.s3Endpoint); err != nil {
				return nil, usagef("--s3-endpoint: %v", err)
			} else if tls != nil && *tls && f.s3Insecure {
				return nil, usagef("--s3-endpoint %s asks for TLS, but --s3-insecure asks for plain HTTP; drop one", f.s3Endpoint)
			}
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
		return nil, usagef("--store %s: unsupported scheme; %s", f.store, storeForms)
	case urlLike.MatchString(f.store):
		return nil, usagef("--store %s: not a store URL (s3:// has two slashes); %s; a directory whose name starts like this is written ./%s", f.store, storeForms, f.store)
	case f.store == "":
		return nil, usagef("--store is empty; %s", storeForms)
	}
	s, err := fs.Open(f.store)
	if err != nil {
		return nil, fmt.Errorf("--store: %w", err)
	}
	return s, nil
}
