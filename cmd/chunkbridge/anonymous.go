package main

import (
	"log/slog"
	"net"
)

// listeners returns the listen flags of a mode with their addresses.
func (f *serveFlags) listeners(p parts) [][2]string {
	var l [][2]string
	if p.services {
		l = append(l, [2]string{"--grpc-listen", f.grpcListen})
	}
	if p.casync {
		l = append(l, [2]string{"--casync-listen", f.casyncListen})
	}
	if p.pmx {
		l = append(l, [2]string{"--pmx-listen", f.pmxListen})
	}
	if p.pbs && f.pbsListen != "" {
		l = append(l, [2]string{"--pbs-listen", f.pbsListen})
	}
	return append(l, [2]string{"--http-listen", f.httpListen})
}

// loopback reports whether addr (host:port) listens on a loopback address
// only. An empty host, a wildcard or a name other than localhost is not:
// a name may resolve to anything.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkAnonymous refuses to serve without authentication on an address
// other machines can reach, unless --allow-anonymous says so: without
// --credentials-file or --auth-token-file every caller is an admin.
// Loopback listeners (make run) need nothing.
func (f *serveFlags) checkAnonymous(p parts, log *slog.Logger) error {
	if f.credentialsFile != "" || f.tokenFile != "" {
		return nil
	}
	for _, l := range f.listeners(p) {
		if loopback(l[1]) {
			continue
		}
		if f.allowAnonymous {
			log.Warn("serving without authentication on a non-loopback address (--allow-anonymous): every caller may read, replace and delete everything", "flag", l[0], "address", l[1])
			continue
		}
		return usagef("%s %s is not a loopback address, and no --credentials-file or --auth-token-file is given: "+
			"anyone who reaches it could read, replace and delete every backup. "+
			"Give --credentials-file (docs/auth.md; chunkbridge auth add-token creates a principal) or --auth-token-file, "+
			"listen on 127.0.0.1, or pass --allow-anonymous to serve everyone on purpose", l[0], l[1])
	}
	return nil
}
