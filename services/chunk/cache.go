package chunk

import (
	"container/list"
	"sync"
)

// presence remembers ids known to be stored, up to a fixed count, evicting
// the least recently used. Only presence is cached: absence changes with
// every upload. Chunks are removed only by garbage collection, which must
// call Forget.
type presence struct {
	mu    sync.Mutex
	max   int
	order *list.List // front = most recent; values are ID
	items map[ID]*list.Element
}

func newPresence(max int) *presence {
	return &presence{max: max, order: list.New(), items: make(map[ID]*list.Element)}
}

func (p *presence) has(id ID) bool {
	if p.max <= 0 {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.items[id]
	if ok {
		p.order.MoveToFront(e)
	}
	return ok
}

func (p *presence) add(id ID) {
	if p.max <= 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if e, ok := p.items[id]; ok {
		p.order.MoveToFront(e)
		return
	}
	p.items[id] = p.order.PushFront(id)
	for p.order.Len() > p.max {
		last := p.order.Back()
		p.order.Remove(last)
		delete(p.items, last.Value.(ID))
	}
}

func (p *presence) forget(id ID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e, ok := p.items[id]; ok {
		p.order.Remove(e)
		delete(p.items, id)
	}
}
