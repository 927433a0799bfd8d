package caindex

import "fmt"

// FeatureFlags is the index header's feature word: for a .caidx the
// archive's --with bits, and for both kinds the digest and exclusion bits.
type FeatureFlags uint64

// The feature bits outside the archive's --with set (caformat.h).
const (
	FlagExcludeFile      FeatureFlags = 0x1000000000000000 // honour .caexclude files
	FlagSHA512_256       FeatureFlags = 0x2000000000000000 // chunk ids are SHA-512/256, not SHA-256
	FlagExcludeSubmounts FeatureFlags = 0x4000000000000000 // do not cross mount points
	FlagExcludeNoDump    FeatureFlags = 0x8000000000000000 // skip files with the nodump attribute

	// WithMask is every archive --with bit (CA_FORMAT_WITH_MASK).
	WithMask FeatureFlags = 0x1ffffffff
	// KnownFlags is every bit casync knows (CA_FORMAT_FEATURE_FLAGS_MAX);
	// readers refuse any other.
	KnownFlags = WithMask | FlagExcludeFile | FlagSHA512_256 | FlagExcludeSubmounts | FlagExcludeNoDump
)

// The --with bits that take part in casync's normalization rules.
const (
	with16BitUIDs   FeatureFlags = 0x1
	with32BitUIDs   FeatureFlags = 0x2
	withUserNames   FeatureFlags = 0x4
	withSecTime     FeatureFlags = 0x8
	withUsecTime    FeatureFlags = 0x10
	withNsecTime    FeatureFlags = 0x20
	with2SecTime    FeatureFlags = 0x40
	withReadOnly    FeatureFlags = 0x80
	withPermissions FeatureFlags = 0x100
	withFlagNoDump  FeatureFlags = 0x100000
	withSubvolume   FeatureFlags = 0x4000000
	withSubvolumeRO FeatureFlags = 0x8000000
	withACL         FeatureFlags = 0x20000000
)

// redundant lists the combinations casync calls "not normalized": a
// richer bit makes a poorer one redundant, or a bit needs another. casync
// refuses such an index (EINVAL) instead of normalizing it.
var redundant = []struct {
	bad  func(FeatureFlags) bool
	what string
}{
	{func(f FeatureFlags) bool {
		return f&withNsecTime != 0 && f&(withUsecTime|withSecTime|with2SecTime) != 0
	},
		"nanosecond time together with a coarser time granularity"},
	{func(f FeatureFlags) bool { return f&withUsecTime != 0 && f&(withSecTime|with2SecTime) != 0 },
		"microsecond time together with a coarser time granularity"},
	{func(f FeatureFlags) bool { return f&withSecTime != 0 && f&with2SecTime != 0 },
		"second and 2-second time granularity together"},
	{func(f FeatureFlags) bool { return f&(with16BitUIDs|with32BitUIDs) == with16BitUIDs|with32BitUIDs },
		"both 16-bit and 32-bit UIDs"},
	{func(f FeatureFlags) bool { return f&withPermissions != 0 && f&withReadOnly != 0 },
		"permissions together with read-only"},
	{func(f FeatureFlags) bool { return f&withACL != 0 && f&(withPermissions|withReadOnly) != 0 },
		"ACLs together with permissions or read-only"},
	{func(f FeatureFlags) bool { return f&withACL != 0 && f&(with16BitUIDs|with32BitUIDs|withUserNames) == 0 },
		"ACLs without UIDs or user names"},
	{func(f FeatureFlags) bool { return f&FlagExcludeNoDump != 0 && f&withFlagNoDump != 0 },
		"EXCLUDE_NODUMP together with the nodump file flag"},
	{func(f FeatureFlags) bool { return f&withSubvolumeRO != 0 && f&withSubvolume == 0 },
		"read-only subvolumes without subvolumes"},
}

// Digest returns the digest the flags select: SHA512_256 if
// FlagSHA512_256 is set, SHA256 otherwise. Flag words differ between
// writers (casync, desync), so compare digests, not words.
func (f FeatureFlags) Digest() Digest {
	if f&FlagSHA512_256 != 0 {
		return SHA512_256
	}
	return SHA256
}

// Validate applies casync's reader checks: only known bits, and
// normalized (no redundant combination). The error wraps ErrUnsupported
// or ErrMalformed.
func (f FeatureFlags) Validate() error {
	if e := f.check(-1); e != nil {
		return e
	}
	return nil
}

func (f FeatureFlags) check(off int64) *FormatError {
	if unknown := f &^ KnownFlags; unknown != 0 {
		return formatErr(off, "feature_flags", ErrUnsupported, "0x%016x has unknown bits 0x%016x", uint64(f), uint64(unknown))
	}
	for _, r := range redundant {
		if r.bad(f) {
			return formatErr(off, "feature_flags", ErrMalformed, "0x%016x is not normalized: %s", uint64(f), r.what)
		}
	}
	return nil
}

// String shows the word in hex, as casync's tools do.
func (f FeatureFlags) String() string { return fmt.Sprintf("0x%016x", uint64(f)) }
