// Package readiness ties gRPC health to the reachability of storage: the
// services report NOT_SERVING while the store cannot be reached, so load
// balancers and Kubernetes stop sending work that would only fail.
package readiness

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/chunkbridge/chunkbridge/storage"
)

// probeKey is a key that never exists: NotFound means the store answered.
const probeKey = "health/probe"

// Monitor probes a store and sets the health status of services.
type Monitor struct {
	store    storage.Store
	health   *health.Server
	services []string
	interval time.Duration
	log      *slog.Logger
	ready    atomic.Bool
	known    bool // a status has been logged; touched only by Run
}

// New returns a monitor that sets "" and each named service. Until its
// first probe the services are NOT_SERVING (health.NewServer starts at
// SERVING, which would be a lie).
func New(store storage.Store, hs *health.Server, services []string, interval time.Duration, log *slog.Logger) *Monitor {
	m := &Monitor{store: store, health: hs, services: append([]string{""}, services...), interval: interval, log: log}
	m.set(healthpb.HealthCheckResponse_NOT_SERVING)
	return m
}

// check probes once and updates the status. Only Run calls it.
func (m *Monitor) check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := m.store.Stat(ctx, probeKey)
	if errors.Is(err, storage.ErrNotFound) {
		err = nil
	}
	ready := err == nil
	if was := m.ready.Swap(ready); was != ready || !m.known {
		m.known = true
		if ready {
			m.log.Info("storage reachable: serving")
			m.set(healthpb.HealthCheckResponse_SERVING)
		} else {
			m.log.Warn("storage unreachable: not serving", "err", err)
			m.set(healthpb.HealthCheckResponse_NOT_SERVING)
		}
	}
	return err
}

// Ready reports the last probe's result.
func (m *Monitor) Ready() bool { return m.ready.Load() }

// Run probes at once and then every interval until ctx ends.
func (m *Monitor) Run(ctx context.Context) {
	m.check(ctx)
	t := time.NewTicker(m.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.check(ctx)
		}
	}
}

func (m *Monitor) set(s healthpb.HealthCheckResponse_ServingStatus) {
	for _, name := range m.services {
		m.health.SetServingStatus(name, s)
	}
}
