package chunk

import (
	"testing"
	"time"
)

// forget clears an id in every domain numbered when it takes effect: a
// domain numbered after forget counted the domains (a tenant's first call)
// whose existence answer, read before the forget, is cached just then
// must not survive it (garbage collection deletes the chunk next).
func TestForgetCoversADomainNumberedMeanwhile(t *testing.T) {
	var id ID
	id[0] = 7
	var p *presence
	p = newPresence(16, func() uint32 {
		gen := p.gen // read before storage was asked, before forget
		done := make(chan struct{})
		go func() { p.add(pkey{1, id}, 0, gen); close(done) }()
		select {
		case <-done:
		case <-time.After(100 * time.Millisecond):
		}
		return 1 // counted before domain 1 was numbered
	})
	p.forget(id)
	time.Sleep(150 * time.Millisecond)
	if p.has(pkey{1, id}) {
		t.Fatal("an existence answer from before the forget survived it in a newly numbered domain")
	}
}
