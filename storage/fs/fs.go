// Package fs is the embedded default store: objects are files under a root
// directory, laid out exactly as their keys say, so a chunkbridge directory
// is also a casync chunk store. Metadata lives in user extended attributes of
// each file, written before the file becomes visible.
package fs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/chunkbridge/chunkbridge/storage"
)

// tmpDir holds files being written, inside the root so that publishing them
// is a rename or link on one file system. No key may use it.
const tmpDir = ".chunkbridge-tmp"

// xattrPrefix namespaces metadata among a file's extended attributes.
const xattrPrefix = "user.chunkbridge."

// Store keeps objects as files under a root directory.
type Store struct {
	root string
	dir  *os.File // the root, held open for syncfs
	sync *syncer
	// inflight serialises puts of one key (see inflight.go).
	inflight inflight
	// tmpfile: new objects are written as unnamed files (O_TMPFILE) in
	// their own directory and linked into place, where the file system
	// and /proc allow it (see putTmpfile).
	tmpfile bool
}

var (
	_ storage.Store  = (*Store)(nil)
	_ storage.Opener = (*Store)(nil)
)

// Open prepares root (creating it if needed) and checks that files can be
// written there with extended attributes, so that an unusable directory
// fails at start-up rather than at the first upload.
func Open(root string) (*Store, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("store directory %q: %w", root, err)
	}
	if err := os.MkdirAll(filepath.Join(abs, tmpDir), 0o755); err != nil {
		return nil, fmt.Errorf("store directory %q cannot be created: %w", abs, err)
	}
	dir, err := os.Open(abs)
	if err != nil {
		return nil, fmt.Errorf("store directory %q: %w", abs, err)
	}
	s := &Store{root: abs, dir: dir, sync: newSyncer(int(dir.Fd()))}
	if err := s.probe(); err != nil {
		dir.Close()
		return nil, fmt.Errorf("store directory %q is not usable: %w", abs, err)
	}
	s.tmpfile = s.probeTmpfile()
	return s, nil
}

// probeTmpfile reports whether an unnamed file can be created in the store
// and linked to a name through /proc.
func (s *Store) probeTmpfile() bool {
	f, err := openTmpfile(filepath.Join(s.root, tmpDir))
	if err != nil {
		return false
	}
	defer f.Close()
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	name := filepath.Join(s.root, tmpDir, "probe-"+hex.EncodeToString(rnd[:]))
	if linkTmpfile(f, name) != nil {
		return false
	}
	os.Remove(name)
	return true
}

func openTmpfile(dir string) (*os.File, error) {
	return os.OpenFile(dir, os.O_WRONLY|unix.O_TMPFILE, 0o644)
}

// linkTmpfile gives the unnamed file f its name; it fails with EEXIST if
// the name is taken. linkat(AT_EMPTY_PATH) would need CAP_DAC_READ_SEARCH;
// the /proc link does not.
func linkTmpfile(f *os.File, name string) error {
	return unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(int(f.Fd())), unix.AT_FDCWD, name, unix.AT_SYMLINK_FOLLOW)
}

// Root is the absolute directory the store lives in.
func (s *Store) Root() string { return s.root }

func (s *Store) probe() error {
	f, err := os.CreateTemp(filepath.Join(s.root, tmpDir), "probe-*")
	if err != nil {
		return fmt.Errorf("cannot create a file: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if err := unix.Fsetxattr(int(f.Fd()), xattrPrefix+"probe", []byte("1"), 0); err != nil {
		return fmt.Errorf("the file system does not keep user extended attributes (%w); use ext4, xfs, btrfs or tmpfs, or an s3:// store", err)
	}
	return nil
}

func (s *Store) path(key string) (string, error) {
	if err := storage.ValidateKey(key); err != nil {
		return "", err
	}
	if key == tmpDir || strings.HasPrefix(key, tmpDir+"/") {
		return "", fmt.Errorf("%w: %q is reserved", storage.ErrInvalidKey, key)
	}
	return filepath.Join(s.root, filepath.FromSlash(key)), nil
}

// Durability: a put makes its temporary file durable, publishes it by
// name, and waits for a shared syncfs (the name is durable) before it
// returns, so a name never points at data that a crash could lose.
// Concurrent puts share syncs (group commit; syncer.go): small files (up to
// groupDataLimit) share a syncfs for their data too, instead of an fsync
// each; larger files are fsynced alone, because a shared sync of large
// files makes every writer wait for all of them.
const groupDataLimit = 1 << 20

// PutIfAbsent writes a temporary file and links it into place; link(2)
// fails when the target exists, which makes the create atomic and exclusive.
func (s *Store) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64, meta storage.Metadata) (bool, error) {
	dst, err := s.path(key)
	if err != nil {
		return false, err
	}
	// A name linked by a put still in flight may be taken back; wait for
	// that put's outcome before looking.
	release, err := s.inflight.acquire(ctx, key)
	if err != nil {
		return false, fmt.Errorf("put %s: %w", key, err)
	}
	defer release()
	if _, err := os.Lstat(dst); err == nil {
		return false, s.existing(key)
	}
	if s.tmpfile {
		return s.putTmpfile(ctx, key, dst, r, size, meta)
	}
	tmp, err := s.writeTemp(ctx, r, size, meta)
	if err != nil {
		return false, fmt.Errorf("put %s: %w", key, err)
	}
	defer os.Remove(tmp)
	if err := s.mkdirs(filepath.Dir(dst)); err != nil {
		return false, fmt.Errorf("put %s: %w", key, err)
	}
	return s.publish(key, dst, func() error { return os.Link(tmp, dst) })
}

// putTmpfile is PutIfAbsent through an unnamed file in the object's own
// directory: nothing to unlink afterwards, no temporary name to sweep after
// a crash (the kernel frees an unlinked inode), and new inodes spread over
// the object directories instead of crowding one temporary folder, where
// ext4's inode allocator spent most of a put's system time. The order is
// the same as through a temporary name: data durable, then the name
// linked, then the name durable, then success.
func (s *Store) putTmpfile(ctx context.Context, key, dst string, r io.Reader, size int64, meta storage.Metadata) (bool, error) {
	dir := filepath.Dir(dst)
	if err := s.mkdirs(dir); err != nil {
		return false, fmt.Errorf("put %s: %w", key, err)
	}
	f, err := openTmpfile(dir)
	if err != nil {
		return false, fmt.Errorf("put %s: %w", key, classify(err))
	}
	defer f.Close()
	if err := fill(ctx, f, r, size, meta); err != nil {
		return false, fmt.Errorf("put %s: %w", key, err)
	}
	if err := s.syncData(f, size); err != nil {
		return false, fmt.Errorf("put %s: %w", key, err)
	}
	return s.publish(key, dst, func() error { return linkTmpfile(f, dst) })
}

// publish gives durable data its name with link, then makes the name
// durable before the put succeeds. A name taken already is answered as
// existing; a name that cannot be made durable is taken back, so that no
// later put mistakes it for a stored object.
func (s *Store) publish(key, dst string, link func() error) (bool, error) {
	if err := link(); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return false, s.existing(key)
		}
		return false, fmt.Errorf("put %s: %w", key, classify(err))
	}
	if err := s.sync.Sync(); err != nil {
		os.Remove(dst)
		return false, fmt.Errorf("put %s: sync: %w", key, classify(err))
	}
	return true, nil
}

// existing answers a put that found the key taken. Puts of one key in this
// store are serialised (inflight), so the name is not one that a put of
// ours may still take back; it may have been linked by another writer of
// the directory that has not yet made it durable, so the answer waits for
// a sync too.
func (s *Store) existing(key string) error {
	if err := s.sync.Sync(); err != nil {
		return fmt.Errorf("put %s: sync: %w", key, classify(err))
	}
	return nil
}

// Put writes a temporary file and renames it over the target.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, size int64, meta storage.Metadata) error {
	dst, err := s.path(key)
	if err != nil {
		return err
	}
	tmp, err := s.writeTemp(ctx, r, size, meta)
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	if err := s.mkdirs(filepath.Dir(dst)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("put %s: %w", key, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("put %s: %w", key, classify(err))
	}
	if err := s.sync.Sync(); err != nil {
		return fmt.Errorf("put %s: sync: %w", key, classify(err))
	}
	return nil
}

// syncData makes a written temporary file durable: small files through
// the group syncer (one syncfs for many writers), large ones with fsync.
func (s *Store) syncData(f *os.File, size int64) error {
	if size <= groupDataLimit {
		if err := s.sync.Sync(); err != nil {
			return fmt.Errorf("sync: %w", classify(err))
		}
		return nil
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync: %w", classify(err))
	}
	return nil
}

// writeTemp copies exactly size bytes into a new temporary file with its
// metadata, durable (syncData), returning its path. On error nothing
// is left.
func (s *Store) writeTemp(ctx context.Context, r io.Reader, size int64, meta storage.Metadata) (path string, err error) {
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	path = filepath.Join(s.root, tmpDir, hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", classify(err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = classify(cerr)
		}
		if err != nil {
			os.Remove(path)
		}
	}()
	if err := fill(ctx, f, r, size, meta); err != nil {
		return "", err
	}
	if err := s.syncData(f, size); err != nil {
		return "", err
	}
	return path, nil
}

// fill writes exactly size bytes from r and then the metadata to f. An
// object already in memory (a bytes or strings reader of exactly size
// bytes, as the chunk service passes) goes in one write instead of 32 KiB
// ones.
func fill(ctx context.Context, f *os.File, r io.Reader, size int64, meta storage.Metadata) error {
	var n int64
	var err error
	if whole, ok := r.(interface {
		io.WriterTo
		Len() int
	}); ok && int64(whole.Len()) == size {
		if err = ctx.Err(); err == nil {
			n, err = whole.WriteTo(f)
		}
	} else {
		n, err = io.Copy(f, io.LimitReader(ctxReader{ctx, r}, size+1))
	}
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return classify(err)
	}
	if n != size {
		return fmt.Errorf("%w: read %d bytes, expected %d", storage.ErrSizeMismatch, min(n, size+1), size)
	}
	for k, v := range meta {
		if err := unix.Fsetxattr(int(f.Fd()), xattrPrefix+k, []byte(v), 0); err != nil {
			return fmt.Errorf("metadata %q: %w", k, classify(err))
		}
	}
	return nil
}

// mkdirs creates dir and its missing parents; the sync that follows the
// publication makes the new entries durable with the file.
func (s *Store) mkdirs(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if err := s.mkdirs(filepath.Dir(dir)); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return classify(err)
	}
	return nil
}

// Get opens the file; the metadata is read from the open descriptor.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, storage.Info, error) {
	fd, info, err := s.open(ctx, "get", key, true)
	if err != nil {
		return nil, storage.Info{}, err
	}
	return os.NewFile(uintptr(fd), info.Key), info, nil
}

// Open is Get without the metadata (storage.Opener): no extended
// attribute is read. The reader is a *File: the descriptor without an
// *os.File around it, which a copy to a socket still sends with sendfile.
func (s *Store) Open(ctx context.Context, key string) (io.ReadCloser, int64, error) {
	fd, info, err := s.open(ctx, "get", key, false)
	if err != nil {
		return nil, 0, err
	}
	return &File{fd: fd}, info.Size, nil
}

// Stat reports size, time and metadata.
func (s *Store) Stat(ctx context.Context, key string) (storage.Info, error) {
	fd, info, err := s.open(ctx, "stat", key, true)
	if err != nil {
		return storage.Info{}, err
	}
	unix.Close(fd)
	return info, nil
}

// open opens key's file and describes it; the caller owns the descriptor.
func (s *Store) open(ctx context.Context, op, key string, withMeta bool) (int, storage.Info, error) {
	path, err := s.path(key)
	if err != nil {
		return -1, storage.Info{}, err
	}
	if err := ctx.Err(); err != nil {
		return -1, storage.Info{}, err
	}
	fd, st, err := openRegular(path)
	if err != nil {
		return -1, storage.Info{}, fmt.Errorf("%s %s: %w", op, key, classify(err))
	}
	info := storage.Info{Key: key, Size: st.Size, Modified: time.Unix(st.Mtim.Unix())}
	if withMeta {
		if info.Metadata, err = readMeta(fd); err != nil {
			unix.Close(fd)
			return -1, storage.Info{}, fmt.Errorf("%s %s: %w", op, key, err)
		}
	}
	return fd, info, nil
}

// File is an object opened by Open: a blocking descriptor of a regular
// file, read with read(2). Unlike an *os.File it asks no fcntl when it
// is made and sets no finalizer (a GET opens one per chunk: about 5% of
// its CPU); its reader must be closed, as every storage reader must. It
// is a syscall.Conn, so net's sendfile takes it as it takes an *os.File.
// Not safe for concurrent use.
type File struct {
	fd int // -1 once closed
}

func (f *File) Read(p []byte) (int, error) {
	if f.fd < 0 {
		return 0, os.ErrClosed
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		n, err := unix.Read(f.fd, p)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return 0, &os.PathError{Op: "read", Path: "chunk file", Err: err}
		case n == 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

// Close closes the descriptor; a second Close returns os.ErrClosed.
func (f *File) Close() error {
	if f.fd < 0 {
		return os.ErrClosed
	}
	fd := f.fd
	f.fd = -1
	if err := unix.Close(fd); err != nil {
		return &os.PathError{Op: "close", Path: "chunk file", Err: err}
	}
	return nil
}

// SyscallConn gives the descriptor to sendfile (syscall.Conn).
func (f *File) SyscallConn() (syscall.RawConn, error) {
	if f.fd < 0 {
		return nil, os.ErrClosed
	}
	return fileConn{f.fd}, nil
}

// fileConn is a File's syscall.RawConn: a blocking descriptor needs no
// poller, so each call runs its function once.
type fileConn struct{ fd int }

func (c fileConn) Control(fn func(fd uintptr)) error { fn(uintptr(c.fd)); return nil }
func (c fileConn) Read(fn func(fd uintptr) bool) error {
	fn(uintptr(c.fd))
	return nil
}
func (c fileConn) Write(fn func(fd uintptr) bool) error {
	fn(uintptr(c.fd))
	return nil
}

// openRegular opens a regular file for reading and describes it. It is
// os.Open without the poller: os.Open tries every file on the runtime's
// epoll, which for a regular file costs four fcntl calls and a failing
// epoll_ctl around the open; os.NewFile of a blocking descriptor asks one
// fcntl, and File none. A directory is fs.ErrNotExist: no object is stored there.
func openRegular(path string) (int, *unix.Stat_t, error) {
	var fd int
	var err error
	for {
		fd, err = unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return -1, nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, nil, err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		unix.Close(fd)
		return -1, nil, fs.ErrNotExist
	}
	return fd, &st, nil
}

func readMeta(fd int) (storage.Metadata, error) {
	buf := make([]byte, 1024)
	n, err := unix.Flistxattr(fd, buf)
	if errors.Is(err, unix.ERANGE) {
		if n, err = unix.Flistxattr(fd, nil); err == nil {
			buf = make([]byte, n)
			n, err = unix.Flistxattr(fd, buf)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("list extended attributes: %w", classify(err))
	}
	meta := storage.Metadata{}
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		k, ok := strings.CutPrefix(name, xattrPrefix)
		if !ok || k == "" {
			continue
		}
		v := make([]byte, 256)
		vn, err := unix.Fgetxattr(fd, name, v)
		if errors.Is(err, unix.ERANGE) {
			if vn, err = unix.Fgetxattr(fd, name, nil); err == nil {
				v = make([]byte, vn)
				vn, err = unix.Fgetxattr(fd, name, v)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("read extended attribute %s: %w", name, classify(err))
		}
		meta[k] = string(v[:vn])
	}
	return meta, nil
}

// Delete removes the file; a missing file is fine.
func (s *Store) Delete(ctx context.Context, key string) error {
	path, err := s.path(key)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete %s: %w", key, classify(err))
	}
	return nil
}

// List walks the directory under prefix in key order. Directories sort as
// their name plus "/", which makes the walk order the lexical order of the
// full keys, as on S3.
func (s *Store) List(ctx context.Context, prefix string, fn func(storage.Info) error) error {
	if err := storage.ValidatePrefix(prefix); err != nil {
		return err
	}
	dirKey, namePrefix := "", prefix
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		dirKey, namePrefix = prefix[:i], prefix[i+1:]
	}
	err := s.walk(ctx, dirKey, namePrefix, fn)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

func (s *Store) walk(ctx context.Context, dirKey, namePrefix string, fn func(storage.Info) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	entries, err := os.ReadDir(filepath.Join(s.root, filepath.FromSlash(dirKey)))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("list %s: %w", dirKey, classify(err))
	}
	sortKey := func(e fs.DirEntry) string {
		if e.IsDir() {
			return e.Name() + "/"
		}
		return e.Name()
	}
	slices.SortFunc(entries, func(a, b fs.DirEntry) int { return strings.Compare(sortKey(a), sortKey(b)) })
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, namePrefix) || (dirKey == "" && name == tmpDir) {
			continue
		}
		key := name
		if dirKey != "" {
			key = dirKey + "/" + name
		}
		if e.IsDir() {
			if err := s.walk(ctx, key, "", fn); err != nil {
				return err
			}
			continue
		}
		if !e.Type().IsRegular() {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted while listing
		}
		if err != nil {
			return fmt.Errorf("list %s: %w", key, classify(err))
		}
		if err := fn(storage.Info{Key: key, Size: fi.Size(), Modified: fi.ModTime()}); err != nil {
			return err
		}
	}
	return nil
}

// Close releases the root directory.
func (s *Store) Close() error { return s.dir.Close() }

// classify maps operating-system errors onto the storage sentinels, keeping
// the original error in the chain.
func classify(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		// The path adds nothing to the key the caller already names, and
		// would show the server's directory layout to clients.
		return storage.ErrNotFound
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.EROFS):
		return fmt.Errorf("%w: %w", storage.ErrPermission, err)
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EIO), errors.Is(err, syscall.EDQUOT):
		return fmt.Errorf("%w: %w", storage.ErrUnavailable, err)
	}
	return err
}

// ctxReader stops a copy when its context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
