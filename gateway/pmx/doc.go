// Package pmx is chunkbridge's PMXBCKUP gateway (DESIGN §7), on the packets
// of format/pmxproto: the early Proxmox Backup binary protocol in front of
// the chunk service and the catalog, with the original's gaps closed. It
// holds no data: chunks go to the chunk service through the typed client
// (package client, over gRPC or in the same process), index entries to the
// catalog, which publishes a file only when BackupFinished commits it. The client
// the `chunkbridge pmx` commands use is package pmxclient.
//
// Each connection runs on a gateway/session.Session: deadlines on every
// read (idle) and write, and every per-connection resource bounded — reply
// bytes queued (downloaded chunks included), request bytes read and not yet
// handled, downloads waiting for the connection's one download worker,
// open backup files. Packets of one id are answered in arrival order; ids
// do not wait for each other. Server.MaxConns caps connections; beyond it
// a client gets Error(Busy) in place of Hello.
package pmx
