package fs

// UsesTmpfile reports whether puts go through unnamed files.
func UsesTmpfile(s *Store) bool { return s.tmpfile }

// WithoutTmpfile makes s put through named temporary files, the fallback
// where O_TMPFILE or /proc is missing.
func WithoutTmpfile(s *Store) *Store { s.tmpfile = false; return s }
