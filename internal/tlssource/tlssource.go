// Package tlssource gives the server and the Go client TLS configurations
// whose certificate, key and CA bundle can change while the process runs:
// from PEM files that are rotated in place ([Files]) or from the SPIFFE
// Workload API ([SPIFFE]). Each handshake uses the set current at that
// moment; connections already open keep their session, so rotation drops
// no call.
package tlssource

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// Set is one certificate with its key, and the CA bundle that verifies
// peers.
type Set struct {
	// Cert is the certificate chain and its private key; Cert.Leaf is set.
	Cert tls.Certificate
	// Pool holds the CA bundle's certificates.
	Pool *x509.CertPool
}

// Source gives the Set to use for the next handshake.
type Source interface {
	Current() (*Set, error)
}

// ServerConfig is a server's TLS configuration: TLS 1.3, client
// certificates required and verified by crypto/tls against the current
// bundle (so the connection state carries verified chains), and the current
// certificate presented.
func ServerConfig(src Source) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequireAndVerifyClientCert,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			s, err := src.Current()
			if err != nil {
				return nil, err
			}
			return &tls.Config{
				MinVersion:   tls.VersionTLS13,
				Certificates: []tls.Certificate{s.Cert},
				ClientAuth:   tls.RequireAndVerifyClientCert,
				ClientCAs:    s.Pool,
			}, nil
		},
	}
}

// ClientConfig is a client's TLS configuration: TLS 1.3, the current
// certificate presented, and the server verified against the current
// bundle and the name the connection was made for, as crypto/tls would
// with RootCAs were the bundle fixed.
func ClientConfig(src Source) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			s, err := src.Current()
			if err != nil {
				return nil, err
			}
			return &s.Cert, nil
		},
		// Verification is done in VerifyConnection, against the bundle
		// current at this handshake: RootCAs cannot change once in use.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyServer(src, cs)
		},
	}
}

func verifyServer(src Source, cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("server presented no certificate")
	}
	s, err := src.Current()
	if err != nil {
		return err
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
		Roots:         s.Pool,
		Intermediates: inter,
		DNSName:       cs.ServerName,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return fmt.Errorf("verify server certificate: %w", err)
	}
	return nil
}
