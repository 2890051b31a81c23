//go:build !unix

package postgres

import "net"

// connAlive cannot look at the socket here; the pool's ping of connections
// idle for more than a second has to do.
func connAlive(net.Conn) bool { return true }
