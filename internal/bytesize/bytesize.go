// Package bytesize reads the sizes people write in flags and files:
// "4096", "64K", "500MiB", "2G", "1TiB" (binary units, B optional).
package bytesize

import (
	"fmt"
	"strconv"
	"strings"
)

// Parse reads a non-negative size.
func Parse(v string) (int64, error) {
	t := strings.TrimSpace(v)
	num := strings.TrimRight(t, "KMGTiBkmgtb")
	unit := strings.ToUpper(strings.TrimSuffix(strings.TrimSuffix(t[len(num):], "B"), "b"))
	shift := map[string]uint{"": 0, "K": 10, "KI": 10, "M": 20, "MI": 20, "G": 30, "GI": 30, "T": 40, "TI": 40}
	s, ok := shift[unit]
	n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	if !ok || err != nil || n < 0 || n > (1<<62)>>s {
		return 0, fmt.Errorf("%q is not a size; want bytes, optionally with K, M, G or T (KiB, MiB, GiB, TiB)", v)
	}
	return n << s, nil
}
