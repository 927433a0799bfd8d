package pmxclient

import (
	"context"
	"fmt"

	"github.com/chunkbridge/chunkbridge/format/pmxproto"
)

// HashList returns the chunk digests of a snapshot file in index order,
// duplicates included. path is store-relative, as BackupCreated returns it
// (e.g. "host/web-01/2026-11-25T10:00:00Z/root.pxar.didx"); the time
// "latest" names the newest snapshot that has the file
// ("host/web-01/latest/root.pxar.didx").
//
// If the server has no such file (Error(Generic)) the error wraps
// ErrNotFound; if a hash list is already streaming on the connection
// (Error(Busy)) it wraps ErrBusy. Both also wrap a *ServerError.
func (c *Client) HashList(ctx context.Context, path string) ([]Digest, error) {
	h := &hashListHandler{path: path, done: make(chan hashListResult, 1)}
	if _, err := c.request(ctx, h, func(id uint8) pmxproto.Packet {
		return &pmxproto.GetHashList{ID: id, Name: path}
	}); err != nil {
		return nil, fmt.Errorf("pmx: hash list of %s: %w", path, err)
	}
	res, err := wait(ctx, c, h.done)
	if err != nil {
		return nil, fmt.Errorf("pmx: hash list of %s: %w", path, err)
	}
	return res.digests, res.err
}

type hashListResult struct {
	digests []Digest
	err     error
}

// hashListHandler collects HashListPart packets until the empty one.
type hashListHandler struct {
	path    string
	digests []Digest
	done    chan hashListResult // buffered: written once
}

func (h *hashListHandler) deliver(p pmxproto.Packet) (disposition, error) {
	switch p := p.(type) {
	case *pmxproto.HashListPart:
		if len(p.Digests) > 0 {
			h.digests = append(h.digests, p.Digests...)
			return keep, nil
		}
		if h.digests == nil {
			h.digests = []Digest{}
		}
		h.done <- hashListResult{digests: h.digests}
	case *pmxproto.Error:
		se := serverError("GetHashList of "+h.path, p)
		if p.Code == pmxproto.ErrorGeneric {
			se.kind = ErrNotFound
		}
		h.done <- hashListResult{err: se}
	default:
		return keep, unexpected("GetHashList of "+h.path, p)
	}
	return release, nil
}

func (h *hashListHandler) fail(err error) {
	h.done <- hashListResult{err: fmt.Errorf("pmx: hash list of %s: %w", h.path, err)}
}
