package chunk

import (
	"context"
	"errors"
	"sync/atomic"

	"github.com/chunkbridge/chunkbridge/internal/budget"
)

// errNoRoom is a charge's answer when its budget has no room: the read
// gives back its work slot and object, waits (charge.wait) and opens
// again, so that a read waiting for memory holds neither.
var errNoRoom = errors.New("no room in the stream budget")

// charge is what one read holds of the stream budget for the chunk it
// reads, from before its buffer is allocated until the response carrying
// it has been sent (release). A nil charge holds nothing.
type charge struct {
	b    *budget.Budget
	held *atomic.Int64 // the stream's total, for its watchdog
	n    int64         // held, at most b.Size()
	want int64         // what a hold without room asked for
}

// reserve waits for n bytes, before the size of the read is known: a
// stream that sends in request order takes its reads' shares in that order
// (see Server.DownloadChunks), so the head of every stream holds its share.
func (c *charge) reserve(ctx context.Context, n int64) error {
	if c == nil || c.n > 0 {
		return nil
	}
	n = c.b.Clamp(n)
	if err := c.b.Acquire(ctx, n); err != nil {
		return err
	}
	c.add(n)
	return nil
}

// hold makes c hold n bytes, once the read knows the stored size and
// before it allocates for it. What is reserved beyond n goes back at
// once. Without room it holds nothing and returns errNoRoom.
func (c *charge) hold(n int64) error {
	if c == nil {
		return nil
	}
	n = c.b.Clamp(n)
	switch {
	case n <= c.n:
		c.b.Release(c.n - n)
		c.add(n - c.n)
		return nil
	case c.n > 0:
		// The object grew since the share was taken (it was stored
		// again): start over, in the queue.
		c.release()
	case c.b.TryAcquire(n):
		c.add(n)
		return nil
	}
	c.want = n
	return errNoRoom
}

// wait takes what the last hold asked for, waiting for it to be free.
func (c *charge) wait(ctx context.Context) error {
	if err := c.b.Acquire(ctx, c.want); err != nil {
		return err
	}
	c.add(c.want)
	return nil
}

func (c *charge) add(n int64) {
	c.n += n
	c.held.Add(n)
}

// release gives back everything c holds.
func (c *charge) release() {
	if c == nil || c.n == 0 {
		return
	}
	n := c.n
	c.add(-n)
	c.b.Release(n)
}
