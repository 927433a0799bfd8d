// Package pmx is chunkbridge's PMXBCKUP gateway (DESIGN §7), on the packets
// of format/pmxproto: the early Proxmox Backup binary protocol in front of
// the chunk service and the catalog, with the original's gaps closed. It
// holds no data: chunks go to ChunkService, index entries to the catalog,
// which publishes a file only when BackupFinished commits it. The client
// the `chunkbridge pmx` commands use is package pmxclient.
package pmx
