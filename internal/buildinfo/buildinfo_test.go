package buildinfo

import (
	"runtime"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestRead(t *testing.T) {
	if got := Read("v9.9.9", ""); got.Version != "v9.9.9" || got.GoVersion != runtime.Version() || got.Commit == "" {
		t.Fatalf("Read(v9.9.9) = %+v", got)
	}
	if got := Read("dev", ""); got.Version == "" || got.Version == "(devel)" {
		t.Fatalf("Read(dev) = %+v; want the module version or dev", got)
	}
	if got := Read("v1", "0123abc-dirty"); got.Commit != "0123abc" || !got.Dirty {
		t.Fatalf("Read with a dirty commit = %+v", got)
	}
	if got := Read("v1", "0123abc"); got.Commit != "0123abc" || got.Dirty {
		t.Fatalf("Read with a commit = %+v", got)
	}
	i := Info{Version: "v1", Commit: "abc", Dirty: true, GoVersion: "go1.26.0"}
	if s := i.String(); s != "chunkbridge v1 (commit abc, dirty) go1.26.0" {
		t.Fatalf("String() = %q", s)
	}
}

func TestCollector(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(Info{Version: "v1", Commit: "abc", Dirty: true, GoVersion: "go1.26.0"}.Collector())
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 1 || mfs[0].GetName() != "chunkbridge_build_info" || len(mfs[0].GetMetric()) != 1 {
		t.Fatalf("gathered %v, %v", mfs, err)
	}
	m := mfs[0].GetMetric()[0]
	labels := map[string]string{}
	for _, l := range m.GetLabel() {
		labels[l.GetName()] = l.GetValue()
	}
	if m.GetGauge().GetValue() != 1 || labels["version"] != "v1" || labels["commit"] != "abc-dirty" || labels["goversion"] != "go1.26.0" {
		t.Fatalf("chunkbridge_build_info %v = %v", labels, m.GetGauge().GetValue())
	}
}
