// Package buildinfo says which build of chunkbridge is running: the
// version (set by the Makefile, else the module's), the VCS commit Go
// stamped into the binary, and the Go version.
package buildinfo

import (
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Info describes one build.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"` // "unknown" when the build had no VCS information
	Dirty     bool   `json:"dirty"`  // the work tree had uncommitted changes
	Time      string `json:"commitTime,omitempty"`
	GoVersion string `json:"goVersion"`
}

// Read returns the running binary's build. version and commit are what
// the linker set (-ldflags "-X main.version=... -X main.commit=..."; a
// commit ending in "-dirty" had uncommitted changes); "" (or version
// "dev") uses what Go stamped: the module's version ("(devel)" for a
// build inside the repository) and the VCS settings, which builds with
// -buildvcs=false lack.
func Read(version, commit string) Info {
	info := Info{Version: version, Commit: "unknown", GoVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		if info.Version == "" {
			info.Version = "dev"
		}
		return withCommit(info, commit)
	}
	if info.Version == "" || info.Version == "dev" {
		info.Version = bi.Main.Version
		if info.Version == "" || info.Version == "(devel)" {
			info.Version = "dev"
		}
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Commit = s.Value
		case "vcs.modified":
			info.Dirty = s.Value == "true"
		case "vcs.time":
			info.Time = s.Value
		}
	}
	return withCommit(info, commit)
}

// withCommit applies a commit set by the linker.
func withCommit(info Info, commit string) Info {
	if commit != "" {
		info.Commit, info.Time = strings.TrimSuffix(commit, "-dirty"), ""
		info.Dirty = strings.HasSuffix(commit, "-dirty")
	}
	return info
}

// String is the one-line form: "chunkbridge v1.2.0 (commit 0123abc…,
// dirty) go1.26.0".
func (i Info) String() string {
	commit := i.Commit
	if i.Dirty {
		commit += ", dirty"
	}
	return "chunkbridge " + i.Version + " (commit " + commit + ") " + i.GoVersion
}

// Collector returns the gauge chunkbridge_build_info{version,commit,goversion} = 1,
// the usual way to expose a build to Prometheus.
func (i Info) Collector() prometheus.Collector {
	commit := i.Commit
	if i.Dirty {
		commit += "-dirty"
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "chunkbridge_build_info",
		Help:        "The running build: version, VCS commit (-dirty for uncommitted changes) and Go version; always 1.",
		ConstLabels: prometheus.Labels{"version": i.Version, "commit": commit, "goversion": i.GoVersion},
	})
	g.Set(1)
	return g
}
