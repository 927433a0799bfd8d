package admin

import (
	"sync"

	"github.com/chunkbridge/chunkbridge/services/chunk"
)

// refSet is the set of chunk ids referenced by the published files,
// sharded by the first byte of the id so that parallel marking and sweep
// workers (each on its own listing prefix) seldom meet on a lock. Each id
// also records whether the listing saw it in the store.
type refSet struct {
	shards [256]refShard
}

type refShard struct {
	mu sync.Mutex
	m  map[chunk.ID]bool // id → seen in the store
}

func newRefSet() *refSet {
	r := &refSet{}
	for i := range r.shards {
		r.shards[i].m = map[chunk.ID]bool{}
	}
	return r
}

func (r *refSet) add(id chunk.ID) {
	sh := &r.shards[id[0]]
	sh.mu.Lock()
	if _, ok := sh.m[id]; !ok {
		sh.m[id] = false
	}
	sh.mu.Unlock()
}

// see records that the store holds id and reports whether it is
// referenced.
func (r *refSet) see(id chunk.ID) bool {
	sh := &r.shards[id[0]]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if _, ok := sh.m[id]; !ok {
		return false
	}
	sh.m[id] = true
	return true
}

func (r *refSet) has(id chunk.ID) bool {
	sh := &r.shards[id[0]]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	_, ok := sh.m[id]
	return ok
}

func (r *refSet) len() int64 {
	var n int64
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		n += int64(len(sh.m))
		sh.mu.Unlock()
	}
	return n
}

// unseen calls fn for every referenced id the listing did not see.
func (r *refSet) unseen(fn func(chunk.ID)) {
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		var ids []chunk.ID
		for id, seen := range sh.m {
			if !seen {
				ids = append(ids, id)
			}
		}
		sh.mu.Unlock()
		for _, id := range ids {
			fn(id)
		}
	}
}
