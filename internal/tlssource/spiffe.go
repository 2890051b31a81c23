package tlssource

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// SPIFFE is a Source fed by the SPIFFE Workload API (a SPIRE agent's
// socket): the workload's X509-SVID and its own trust domain's bundle,
// both replaced as the agent rotates them. Peers are verified by crypto/tls
// against that bundle, so a server's connection state carries verified
// chains and Custos reads the caller's SPIFFE ID from them as it does for
// file certificates. Federated trust domains are not trusted.
type SPIFFE struct {
	src *workloadapi.X509Source

	mu   sync.Mutex
	svid *x509svid.SVID
	bndl *x509bundle.Bundle
	set  *Set
}

// NewSPIFFE connects to the Workload API at addr ("unix:///run/spire/agent.sock"
// or "tcp://127.0.0.1:8081"; empty means the SPIFFE_ENDPOINT_SOCKET
// environment variable) and waits, until ctx is done, for the first SVID.
func NewSPIFFE(ctx context.Context, addr string) (*SPIFFE, error) {
	var opts []workloadapi.X509SourceOption
	if addr != "" {
		opts = append(opts, workloadapi.WithClientOptions(workloadapi.WithAddr(addr)))
	}
	src, err := workloadapi.NewX509Source(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("SPIFFE Workload API %s: %w", addr, err)
	}
	return &SPIFFE{src: src}, nil
}

// X509Source is the underlying source, for go-spiffe's own helpers.
func (s *SPIFFE) X509Source() *workloadapi.X509Source { return s.src }

// Current returns the SVID and bundle the agent last sent.
func (s *SPIFFE) Current() (*Set, error) {
	svid, err := s.src.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("SPIFFE: %w", err)
	}
	b, err := s.src.GetX509BundleForTrustDomain(svid.ID.TrustDomain())
	if err != nil {
		return nil, fmt.Errorf("SPIFFE: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.set != nil && s.svid == svid && s.bndl == b {
		return s.set, nil
	}
	cert := tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	pool := x509.NewCertPool()
	for _, c := range b.X509Authorities() {
		pool.AddCert(c)
	}
	set := &Set{Cert: cert, Pool: pool}
	td := svid.ID.TrustDomain()
	set.peer = func(leaf *x509.Certificate) error {
		// As go-spiffe's x509svid.Verify: the bundle's authorities may
		// sign more than this trust domain's SVIDs (an upstream CA's
		// root, a federated domain's IDs); only this domain's SVIDs are
		// callers.
		id, err := x509svid.IDFromCert(leaf)
		if err != nil {
			return fmt.Errorf("the client certificate is not an X509-SVID: %w", err)
		}
		if id.TrustDomain() != td {
			return fmt.Errorf("the client's SPIFFE ID %s is not of trust domain %s", id, td)
		}
		return nil
	}
	s.svid, s.bndl, s.set = svid, b, set
	return s.set, nil
}

// Close stops watching the Workload API.
func (s *SPIFFE) Close() error { return s.src.Close() }
