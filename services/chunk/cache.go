package chunk

import (
	"container/list"
	"sync"
)

// presence remembers ids known to be stored, with their uncompressed size
// when known (0 if not), up to a fixed count, evicting the least recently
// used. Only presence is cached: absence changes with every upload. Chunks
// are removed only by garbage collection, which must call Forget.
//
// Every forget advances a generation. Callers read the generation before
// they ask storage whether a chunk exists and pass it to add, which drops
// the entry if any forget happened in between: an answer storage gave
// before a chunk was deleted can never be cached after the deletion's
// Forget, however the goroutines interleave.
type presence struct {
	mu    sync.Mutex
	max   int
	gen   uint64
	order *list.List // front = most recent; values are entry
	items map[pkey]*list.Element
	// domains is how many domain numbers forget must clear an id in.
	domains func() uint32
}

// pkey is an id in one dedup domain (by its number in this process): a
// chunk stored in one domain is not stored in another.
type pkey struct {
	dom uint32
	id  ID
}

type entry struct {
	k    pkey
	size int64
}

func newPresence(max int, domains func() uint32) *presence {
	return &presence{max: max, order: list.New(), items: make(map[pkey]*list.Element), domains: domains}
}

func (p *presence) has(id pkey) bool {
	_, ok := p.lookup(id)
	return ok
}

// lookup reports whether id is known to be stored, and its size (0 when
// not known).
func (p *presence) lookup(id pkey) (int64, bool) {
	if p.max <= 0 {
		return 0, false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.items[id]
	if !ok {
		return 0, false
	}
	p.order.MoveToFront(e)
	return e.Value.(entry).size, true
}

// generation is read before asking storage; see add.
func (p *presence) generation() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.gen
}

// add records id as stored; size 0 means unknown and keeps a known size.
// gen is the generation read before storage was asked: if anything was
// forgotten since, the answer may be stale and nothing is recorded.
func (p *presence) add(id pkey, size int64, gen uint64) {
	if p.max <= 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if gen != p.gen {
		return
	}
	if e, ok := p.items[id]; ok {
		if size > 0 {
			e.Value = entry{id, size}
		}
		p.order.MoveToFront(e)
		return
	}
	p.items[id] = p.order.PushFront(entry{id, size})
	for p.order.Len() > p.max {
		last := p.order.Back()
		p.order.Remove(last)
		delete(p.items, last.Value.(entry).k)
	}
}

func (p *presence) forgetAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.gen++
	p.order.Init()
	clear(p.items)
}

// forget drops id in every domain: garbage collection deletes by id.
func (p *presence) forget(id ID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	// Counted under the lock: a domain numbered later can only add an
	// answer after the gen++ below, which refuses it.
	n := p.domains()
	p.gen++
	for d := range n {
		k := pkey{d, id}
		if e, ok := p.items[k]; ok {
			p.order.Remove(e)
			delete(p.items, k)
		}
	}
}
