// Package pmx is chunkbridge's PMXBCKUP side (DESIGN §7), on the packets of
// gateway/pmx/wire:
//
//   - the gateway (Server): the early Proxmox Backup binary protocol in front
//     of the chunk service and the catalog, with the original's gaps closed.
//     It holds no data: chunks go to ChunkService, index entries to the
//     catalog, which publishes a file only when BackupFinished commits it;
//   - the client (Client), with Backup and Restore on top of it, which the
//     `chunkbridge pmx` commands use.
package pmx
