// Package pmxclient is the PMXBCKUP client (DESIGN §7) on the packets of
// format/pmxproto: Client multiplexes transactions on one connection, and
// Backup and Restore on top of it are what the `chunkbridge pmx` commands
// run. The gateway it talks to is package gateway/pmx.
package pmxclient
