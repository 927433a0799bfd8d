// Package s3 stores objects in an S3-compatible bucket through minio-go.
//
// Every minio-go error is classified onto the storage sentinels before it is
// wrapped (minio.ToErrorResponse does not unwrap), so callers above storage
// see storage.ErrNotFound or storage.ErrUnavailable, never minio types.
package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/chunkbridge/chunkbridge/storage"
)

// Config locates a bucket.
type Config struct {
	// Endpoint is host[:port], or http(s)://host[:port], whose scheme
	// decides TLS (see ParseEndpoint); empty means AWS (s3.amazonaws.com).
	Endpoint string
	// Bucket is created at Open when it does not exist.
	Bucket string
	// Prefix is prepended to every key ("" or "a/b").
	Prefix string
	// Region; empty lets the client discover it.
	Region string
	// Insecure uses plain HTTP.
	Insecure bool
	// AccessKey and SecretKey; when both are empty the client looks in the
	// environment and AWS configuration files.
	AccessKey, SecretKey string
	// MaxRetries bounds minio-go's own retries of one request (default 3),
	// so that an outage surfaces as ErrUnavailable within seconds.
	MaxRetries int
}

// ParseURL reads "s3://bucket[/prefix]".
func ParseURL(raw string) (bucket, prefix string, err error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "s3" || u.Host == "" {
		return "", "", fmt.Errorf("store %q: want s3://bucket[/prefix]", raw)
	}
	prefix = strings.Trim(u.Path, "/")
	if prefix != "" {
		if err := storage.ValidateKey(prefix); err != nil {
			return "", "", fmt.Errorf("store %q: prefix: %w", raw, err)
		}
	}
	return u.Host, prefix, nil
}

// Store keeps objects in one bucket under a prefix.
type Store struct {
	client *minio.Client
	bucket string
	prefix string // "" or ends in "/"
}

var (
	_ storage.Store          = (*Store)(nil)
	_ storage.BatchDeleter   = (*Store)(nil)
	_ storage.MetadataLister = (*Store)(nil)
)

// Open connects, checks the credentials and creates the bucket if missing.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("s3 store: no bucket given")
	}
	endpoint := cfg.Endpoint
	if endpoint == "" {
		endpoint = "s3.amazonaws.com"
	}
	endpoint, tls, err := ParseEndpoint(endpoint)
	if err != nil {
		return nil, err
	}
	if tls != nil {
		if *tls && cfg.Insecure {
			return nil, fmt.Errorf("S3 endpoint %q: https:// asks for TLS, but insecure (plain HTTP) is set too; drop one", cfg.Endpoint)
		}
		cfg.Insecure = !*tls
	}
	var creds *credentials.Credentials
	if cfg.AccessKey != "" || cfg.SecretKey != "" {
		creds = credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, "")
	} else {
		creds = credentials.NewChainCredentials([]credentials.Provider{
			&credentials.EnvAWS{}, &credentials.FileAWSCredentials{}, &credentials.IAM{},
		})
	}
	retries := cfg.MaxRetries
	if retries <= 0 {
		retries = 3
	}
	client, err := minio.New(endpoint, &minio.Options{
		Creds:      creds,
		Secure:     !cfg.Insecure,
		Region:     cfg.Region,
		MaxRetries: retries,
		// Path-style works with every S3 implementation, in-cluster MinIO
		// included; AWS still accepts it.
		BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 store %s/%s: %w", endpoint, cfg.Bucket, err)
	}
	s := &Store{client: client, bucket: cfg.Bucket}
	if cfg.Prefix != "" {
		s.prefix = strings.Trim(cfg.Prefix, "/") + "/"
	}
	exists, err := client.BucketExists(ctx, cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("s3 store %s: bucket %q: %w", endpoint, cfg.Bucket, withCredentials(cfg, classify(err)))
	}
	if !exists {
		err := client.MakeBucket(ctx, cfg.Bucket, minio.MakeBucketOptions{Region: cfg.Region})
		if err != nil {
			code := minio.ToErrorResponse(err).Code
			if code != "BucketAlreadyOwnedByYou" && code != "BucketAlreadyExists" {
				return nil, fmt.Errorf("s3 store %s: create bucket %q: %w", endpoint, cfg.Bucket, withCredentials(cfg, classify(err)))
			}
		}
	}
	return s, nil
}

// withCredentials adds to a refusal where credentials were looked for.
func withCredentials(cfg Config, err error) error {
	if errors.Is(err, storage.ErrPermission) {
		return fmt.Errorf("%w (%s)", err, describeCredentials(cfg))
	}
	return err
}

func (s *Store) object(key string) (string, error) {
	if err := storage.ValidateKey(key); err != nil {
		return "", err
	}
	return s.prefix + key, nil
}

// PutIfAbsent is a conditional PUT (If-None-Match: *): the bucket itself
// decides which of several concurrent writers creates the object. Once the
// request has started, ctx ending does not abort it (see commitGrace).
func (s *Store) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64, meta storage.Metadata) (bool, error) {
	name, err := s.object(key)
	if err != nil {
		return false, err
	}
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("put %s: %w", key, err)
	}
	opts := putOptions(meta)
	opts.SetMatchETagExcept("*")
	wctx, done := committing(ctx)
	defer done()
	_, err = s.client.PutObject(wctx, s.bucket, name, r, size, opts)
	if err == nil {
		return true, nil
	}
	switch minio.ToErrorResponse(err).Code {
	case minio.PreconditionFailed:
		return false, nil
	case "ConditionalRequestConflict":
		// AWS: another conditional write of this key is in flight. Whoever
		// wins, the key now exists or is about to; report "not created" once
		// it is visible.
		if _, serr := s.Stat(ctx, key); serr == nil {
			return false, nil
		}
	}
	return false, fmt.Errorf("put %s: %w", key, classify(err))
}

// Put replaces the object. S3 makes a PUT visible only when complete. Once
// the request has started, ctx ending does not abort it (see commitGrace).
func (s *Store) Put(ctx context.Context, key string, r io.Reader, size int64, meta storage.Metadata) error {
	name, err := s.object(key)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	wctx, done := committing(ctx)
	defer done()
	if _, err := s.client.PutObject(wctx, s.bucket, name, r, size, putOptions(meta)); err != nil {
		return fmt.Errorf("put %s: %w", key, classify(err))
	}
	return nil
}

// commitGrace is how long a PUT or a delete goes on after its caller gave
// up. A PUT
// aborted while an erasure-coded MinIO commits it can leave the object on
// fewer drives than its write quorum: readable while every node is up, so
// that a later conditional PUT reports it present, and gone once one more
// node is down. So a PUT that has started is let finish, within bounds.
const commitGrace = 10 * time.Second

// committing returns the context of a PUT: not cancelled with ctx, but
// commitGrace after it.
func committing(ctx context.Context) (context.Context, context.CancelFunc) {
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(commitGrace, cancel) })
	return wctx, func() { stop(); cancel() }
}

func putOptions(meta storage.Metadata) minio.PutObjectOptions {
	um := make(map[string]string, len(meta))
	for k, v := range meta {
		um[k] = v
	}
	return minio.PutObjectOptions{
		UserMetadata: um,
		ContentType:  "application/octet-stream",
		// One PUT per object, however large: multipart uploads are not
		// conditional on every S3 implementation, and a single PUT is
		// visible only when complete.
		DisableMultipart: true,
	}
}

// Get issues one GET request, whose response headers describe the object
// (minio-go's lazy Object would add a HEAD before it).
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, storage.Info, error) {
	name, err := s.object(key)
	if err != nil {
		return nil, storage.Info{}, err
	}
	body, oi, _, err := minio.Core{Client: s.client}.GetObject(ctx, s.bucket, name, minio.GetObjectOptions{})
	if err != nil {
		return nil, storage.Info{}, fmt.Errorf("get %s: %w", key, classify(err))
	}
	return classifiedBody{body}, s.info(key, oi), nil
}

// classifiedBody maps a failure while the body streams (a reset
// connection) onto the storage sentinels, like every other error.
type classifiedBody struct{ io.ReadCloser }

func (b classifiedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		err = classify(err)
	}
	return n, err
}

// Stat is a HEAD request.
func (s *Store) Stat(ctx context.Context, key string) (storage.Info, error) {
	name, err := s.object(key)
	if err != nil {
		return storage.Info{}, err
	}
	oi, err := s.client.StatObject(ctx, s.bucket, name, minio.StatObjectOptions{})
	if err != nil {
		return storage.Info{}, fmt.Errorf("stat %s: %w", key, classify(err))
	}
	return s.info(key, oi), nil
}

func (s *Store) info(key string, oi minio.ObjectInfo) storage.Info {
	meta := storage.Metadata{}
	for k, v := range oi.UserMetadata {
		meta[strings.ToLower(k)] = v
	}
	return storage.Info{Key: key, Size: oi.Size, Modified: oi.LastModified, Metadata: meta}
}

// Delete removes the object; S3 treats a missing key as success.
func (s *Store) Delete(ctx context.Context, key string) error {
	name, err := s.object(key)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	wctx, done := committing(ctx) // as a PUT: see commitGrace
	defer done()
	if err := s.client.RemoveObject(wctx, s.bucket, name, minio.RemoveObjectOptions{}); err != nil {
		if minio.ToErrorResponse(err).Code == "NoSuchKey" {
			return nil
		}
		return fmt.Errorf("delete %s: %w", key, classify(err))
	}
	return nil
}

// DeleteBatch removes keys with multi-object DeleteObjects requests of up
// to 1000 keys each (minio-go splits larger batches).
func (s *Store) DeleteBatch(ctx context.Context, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	names := make([]string, len(keys))
	for i, k := range keys {
		name, err := s.object(k)
		if err != nil {
			return err
		}
		names[i] = name
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delete %d objects: %w", len(keys), err)
	}
	// Once started, the batch is let finish like a PUT (commitGrace): a
	// delete aborted mid-request can leave an object on fewer drives than
	// its quorum. Garbage collection's batch timeout allows for the grace
	// (docs/gc.md).
	wctx, done := committing(ctx)
	defer done()
	objects := make(chan minio.ObjectInfo)
	go func() {
		defer close(objects)
		for _, name := range names {
			select {
			case objects <- minio.ObjectInfo{Key: name}:
			case <-wctx.Done():
				return
			}
		}
	}()
	var failed []string
	var first error
	for r := range s.client.RemoveObjectsWithResult(wctx, s.bucket, objects, minio.RemoveObjectsOptions{}) {
		if r.Err == nil || minio.ToErrorResponse(r.Err).Code == "NoSuchKey" {
			continue
		}
		if first == nil {
			first = r.Err
		}
		failed = append(failed, strings.TrimPrefix(r.ObjectName, s.prefix))
	}
	if err := wctx.Err(); err != nil {
		return fmt.Errorf("delete %d objects: %w", len(keys), err)
	}
	if first != nil {
		shown := failed[:min(len(failed), 5)]
		return fmt.Errorf("delete %d objects, %d failed (first: %s): %w", len(keys), len(failed), strings.Join(shown, ", "), classify(first))
	}
	return nil
}

// List pages through ListObjectsV2; S3 returns keys in lexical order.
func (s *Store) List(ctx context.Context, prefix string, fn func(storage.Info) error) error {
	return s.list(ctx, prefix, false, fn)
}

// ListWithMetadata asks for the objects' metadata in the listing, which
// MinIO returns; other S3 services ignore the request and Info.Metadata
// stays nil.
func (s *Store) ListWithMetadata(ctx context.Context, prefix string, fn func(storage.Info) error) error {
	return s.list(ctx, prefix, true, fn)
}

func (s *Store) list(ctx context.Context, prefix string, withMeta bool, fn func(storage.Info) error) error {
	if err := storage.ValidatePrefix(prefix); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops minio-go's listing goroutine when fn ends early
	opts := minio.ListObjectsOptions{Prefix: s.prefix + prefix, Recursive: true, WithMetadata: withMeta}
	for oi := range s.client.ListObjects(ctx, s.bucket, opts) {
		if oi.Err != nil {
			if err := ctx.Err(); err != nil {
				return err
			}
			return fmt.Errorf("list %s: %w", prefix, classify(oi.Err))
		}
		info := storage.Info{Key: strings.TrimPrefix(oi.Key, s.prefix), Size: oi.Size, Modified: oi.LastModified}
		if withMeta && oi.UserMetadataStripped != nil {
			info.Metadata = storage.Metadata{}
			for k, v := range oi.UserMetadataStripped {
				info.Metadata[strings.ToLower(k)] = v
			}
		}
		if err := fn(info); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// Close releases idle connections.
func (s *Store) Close() error { return nil }

// classify maps a minio-go or transport error onto the storage sentinels.
// Context errors pass through untouched so callers can tell cancellation
// from an outage.
func classify(err error) error {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	resp := minio.ToErrorResponse(err)
	switch resp.Code {
	case "NoSuchKey", "NotFound":
		return fmt.Errorf("%w: %w", storage.ErrNotFound, err)
	case "NoSuchBucket":
		return fmt.Errorf("%w: bucket %q does not exist: %w", storage.ErrUnavailable, resp.BucketName, err)
	case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "AccountProblem":
		return fmt.Errorf("%w: %w", storage.ErrPermission, err)
	case "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "XMinioServerNotInitialized", "XMinioStorageFull":
		return fmt.Errorf("%w: %w", storage.ErrUnavailable, err)
	}
	if resp.StatusCode == http.StatusNotFound {
		return fmt.Errorf("%w: %w", storage.ErrNotFound, err)
	}
	if resp.StatusCode == http.StatusForbidden {
		return fmt.Errorf("%w: %w", storage.ErrPermission, err)
	}
	if resp.StatusCode >= 500 {
		return fmt.Errorf("%w: %w", storage.ErrUnavailable, err)
	}
	var netErr net.Error
	var urlErr *url.Error
	if minio.IsNetworkOrHostDown(err, false) || errors.As(err, &netErr) || errors.As(err, &urlErr) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: %w", storage.ErrUnavailable, err)
	}
	return err
}
