// Package identity derives a caller's identity from its verified TLS client
// certificate and carries it in the request context.
//
// A caller's identity is the SPIFFE ID in its certificate's URI SAN, else
// the certificate's subject common name. It is derived once per call, by
// AuthFunc running in an interceptor; handlers then read it with FromContext
// and never look at the TLS state themselves.
package identity

import (
	"context"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// ErrNoVerifiedCertificate is returned by FromPeer when the call did not
// arrive over TLS with a client certificate verified against the configured
// client CAs.
var ErrNoVerifiedCertificate = errors.New("identity: no verified client certificate")

// ErrCertificateExpired is returned by FromPeer when a certificate of the
// verified chain of the call's connection has expired since the handshake:
// a connection outlives its certificate, the certificate's authority does
// not.
var ErrCertificateExpired = errors.New("identity: the client certificate has expired since the connection was made; reconnect with a current one")

// ErrNoIdentity is returned by FromCertificate when a certificate names
// neither a SPIFFE ID nor a subject common name, or names a SPIFFE ID
// ambiguously or malformed.
var ErrNoIdentity = errors.New("identity: certificate carries no usable identity")

// oidCommonName is the subject attribute of a common name (2.5.4.3).
var oidCommonName = asn1.ObjectIdentifier{2, 5, 4, 3}

// FromCertificate returns the identity named by cert.
//
// If any URI SAN has the spiffe scheme, the certificate is treated as an
// X509-SVID: it must carry exactly one URI SAN, a valid SPIFFE ID, which is
// returned. A certificate mixing a SPIFFE ID with other URIs, or carrying a
// malformed one, is refused rather than falling back to its common name.
// Otherwise (no URIs, or only non-SPIFFE URIs) the subject common name is
// returned; a subject with more than one is refused. The error wraps ErrNoIdentity when there is neither.
func FromCertificate(cert *x509.Certificate) (string, error) {
	if cert == nil {
		return "", fmt.Errorf("%w: no certificate", ErrNoIdentity)
	}
	for _, u := range cert.URIs {
		if strings.EqualFold(u.Scheme, "spiffe") {
			id, err := x509svid.IDFromCert(cert)
			if err != nil {
				return "", fmt.Errorf("%w: invalid SPIFFE ID: %v", ErrNoIdentity, err)
			}
			return id.String(), nil
		}
	}
	cns := 0
	for _, n := range cert.Subject.Names {
		if n.Type.Equal(oidCommonName) {
			cns++
		}
	}
	if cns > 1 {
		// Go keeps the last, other tools (and the CA's checks) may read
		// the first: which one is the caller is ambiguous.
		return "", fmt.Errorf("%w: the subject has %d common names", ErrNoIdentity, cns)
	}
	if cn := cert.Subject.CommonName; cn != "" {
		// A SPIFFE ID is only ever taken from a URI SAN: a common name that
		// merely spells one must not pass for that workload.
		if len(cn) >= len("spiffe:") && strings.EqualFold(cn[:len("spiffe:")], "spiffe:") {
			return "", fmt.Errorf("%w: the common name looks like a SPIFFE ID but the certificate has no SPIFFE URI SAN", ErrNoIdentity)
		}
		return cn, nil
	}
	return "", fmt.Errorf("%w: no SPIFFE ID URI SAN and no subject common name", ErrNoIdentity)
}

// FromPeer returns the identity of the caller of the gRPC call whose server
// context is ctx, as long as every certificate of the chain verified at the
// handshake is still within its validity (ErrCertificateExpired once one is
// not). It requires the client certificate to have been verified
// by crypto/tls (tls.RequireAndVerifyClientCert), so that
// State.VerifiedChains is populated; a TLS configuration that verifies only
// in VerifyPeerCertificate leaves it empty and is refused. The error wraps
// ErrNoVerifiedCertificate or ErrNoIdentity.
func FromPeer(ctx context.Context) (string, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", ErrNoVerifiedCertificate
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return "", ErrNoVerifiedCertificate
	}
	chains := info.State.VerifiedChains
	if len(chains) == 0 || len(chains[0]) == 0 {
		return "", ErrNoVerifiedCertificate
	}
	chain := chains[0]
	id, err := fromLeafCached(chain[0])
	if err != nil {
		return "", err
	}
	// The chain's own expiry, each call: resumed connections share one
	// leaf pointer (crypto/tls's certificate cache) with chains of their
	// own, so it is not cached with the identity.
	now := time.Now()
	for _, cert := range chain {
		if now.After(cert.NotAfter) {
			return "", ErrCertificateExpired
		}
	}
	return id, nil
}

// certCache remembers the identity of recently seen client certificates.
// Every call of a connection shares its peer's *x509.Certificate (and
// resumed connections with the same certificate share one too), so the
// identity is derived once per certificate instead of once per call. It is
// bounded (cleared when full), keyed by pointer, and holds only identities
// derived by FromCertificate from a leaf of a verified chain, so it can
// never hold one for a certificate that did not verify.
var certCache struct {
	sync.Mutex
	m map[*x509.Certificate]string
}

const certCacheSize = 4096

func fromLeafCached(leaf *x509.Certificate) (string, error) {
	certCache.Lock()
	id, ok := certCache.m[leaf]
	certCache.Unlock()
	if ok {
		return id, nil
	}
	id, err := FromCertificate(leaf)
	if err != nil {
		return "", err
	}
	certCache.Lock()
	if certCache.m == nil || len(certCache.m) >= certCacheSize {
		certCache.m = make(map[*x509.Certificate]string, 64)
	}
	certCache.m[leaf] = id
	certCache.Unlock()
	return id, nil
}

type contextKey struct{}

// NewContext returns a copy of ctx carrying the caller identity id.
func NewContext(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, contextKey{}, id)
}

// FromContext returns the caller identity stored in ctx by NewContext (or
// AuthFunc). ok is false when there is none or it is empty.
func FromContext(ctx context.Context) (id string, ok bool) {
	id, _ = ctx.Value(contextKey{}).(string)
	return id, id != ""
}

// AuthFunc derives the caller's identity from its verified client
// certificate and returns ctx carrying it. It has the signature of
// go-grpc-middleware v2's interceptors/auth.AuthFunc:
//
//	grpc.ChainUnaryInterceptor(auth.UnaryServerInterceptor(identity.AuthFunc), …)
//	grpc.ChainStreamInterceptor(auth.StreamServerInterceptor(identity.AuthFunc), …)
//
// A call without a verified client certificate fails with UNAUTHENTICATED
// "no verified client certificate"; a verified certificate that names no
// usable identity fails with UNAUTHENTICATED saying why. No service is
// exempt: health checking and reflection need a certificate too.
func AuthFunc(ctx context.Context) (context.Context, error) {
	id, err := Authenticate(ctx)
	if err != nil {
		return nil, err
	}
	return NewContext(ctx, id), nil
}

// Authenticate is AuthFunc without the context: the caller's identity, or
// the UNAUTHENTICATED status AuthFunc returns.
func Authenticate(ctx context.Context) (string, error) {
	id, err := FromPeer(ctx)
	switch {
	case errors.Is(err, ErrNoVerifiedCertificate):
		return "", status.Error(codes.Unauthenticated, "no verified client certificate")
	case err != nil:
		return "", status.Error(codes.Unauthenticated, strings.TrimPrefix(err.Error(), "identity: "))
	}
	return id, nil
}
