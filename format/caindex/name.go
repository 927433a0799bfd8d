package caindex

import (
	"fmt"
	"strings"
)

// SnapshotPrefix starts the names of PMXBCKUP snapshot files seen as
// casync indexes; no casync client may write there.
const SnapshotPrefix = "snapshots/"

// CleanName checks the catalog name of a casync index and returns it
// without the leading "/" that casync's remote argv carries. A name ends in
// .caibx or .caidx and has no empty, "." or ".." segment and no control
// character, so it stays inside the catalog on every store.
func CleanName(name string) (string, error) {
	clean := strings.TrimLeft(name, "/")
	if !strings.HasSuffix(clean, ".caibx") && !strings.HasSuffix(clean, ".caidx") {
		return "", fmt.Errorf("index name %q must end in .caibx or .caidx", name)
	}
	if len(clean) > 800 {
		return "", fmt.Errorf("index name %q is longer than 800 bytes", name[:64]+"…")
	}
	for _, seg := range strings.Split(clean, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return "", fmt.Errorf("index name %q has an empty, \".\" or \"..\" segment", name)
		}
	}
	for _, c := range []byte(clean) {
		if c < 0x20 || c == 0x7f || c == '\\' {
			return "", fmt.Errorf("index name %q contains byte 0x%02x", name, c)
		}
	}
	return clean, nil
}

// CleanWritableName is CleanName, also refusing SnapshotPrefix.
func CleanWritableName(name string) (string, error) {
	clean, err := CleanName(name)
	if err == nil && strings.HasPrefix(clean, SnapshotPrefix) {
		return "", fmt.Errorf("index name %q: %s is reserved for PMXBCKUP snapshots", name, SnapshotPrefix)
	}
	return clean, err
}
