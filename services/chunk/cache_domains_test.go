package chunk

import "testing"

// forget clears an id in every domain numbered when it takes effect: a
// domain numbered after forget counted the domains (a tenant's first call)
// whose existence answer, read before the forget, is cached just then
// must not survive it (garbage collection deletes the chunk next).
func TestForgetCoversADomainNumberedMeanwhile(t *testing.T) {
	var id ID
	id[0] = 7
	var p *presence
	done := make(chan struct{})
	p = newPresence(16, func() uint32 {
		gen := p.gen // read before storage was asked, before forget
		go func() { p.add(pkey{1, id}, 0, gen); close(done) }()
		if p.mu.TryLock() {
			// Counted without the lock (the bug this test is for): the
			// answer lands before forget goes on.
			p.mu.Unlock()
			<-done
		}
		return 1 // counted before domain 1 was numbered
	})
	p.forget(id)
	<-done // the add, whenever it ran
	if p.has(pkey{1, id}) {
		t.Fatal("an existence answer from before the forget survived it in a newly numbered domain")
	}
}
