package custos

import (
	"net"
	"testing"
)

// Two replicas alike in host, process id and address (containers with a
// fixed hostname, each process 1 on [::]:8443) get different lease holder
// ids: with one id, both counted as the holder and both ran the passes.
func TestHolderIDsDifferForReplicasAlike(t *testing.T) {
	addr := &net.TCPAddr{IP: net.IPv6unspecified, Port: 8443}
	if a, b := holderID(addr), holderID(addr); a == b {
		t.Fatalf("two replicas alike share the lease holder id %q", a)
	}
}
