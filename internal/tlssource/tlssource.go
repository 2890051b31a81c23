// Package tlssource gives the server and the Go client TLS configurations
// whose certificate, key and CA bundle can change while the process runs:
// from PEM files that are rotated in place ([Files]) or from the SPIFFE
// Workload API ([SPIFFE]). Each handshake uses the set current at that
// moment; connections already open keep their session, so rotation drops
// no call.
package tlssource

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"

	"google.golang.org/grpc/credentials"
)

// Set is one certificate with its key, and the CA bundle that verifies
// peers.
type Set struct {
	// Cert is the certificate chain and its private key; Cert.Leaf is set.
	Cert tls.Certificate
	// Pool holds the CA bundle's certificates.
	Pool *x509.CertPool
	// peer, if set, checks a peer's leaf certificate beyond its chain
	// (a SPIFFE source: an SVID of its own trust domain).
	peer func(leaf *x509.Certificate) error
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
			c := &tls.Config{
				MinVersion:   tls.VersionTLS13,
				Certificates: []tls.Certificate{s.Cert},
				ClientAuth:   tls.RequireAndVerifyClientCert,
				ClientCAs:    s.Pool,
			}
			if s.peer != nil {
				c.VerifyConnection = func(cs tls.ConnectionState) error {
					if len(cs.PeerCertificates) == 0 {
						return errors.New("no client certificate")
					}
					return s.peer(cs.PeerCertificates[0])
				}
			}
			return c, nil
		},
	}
}

// ClientCredentials are a gRPC client's transport credentials over src:
// TLS 1.3, the current certificate presented, and the server verified
// against the current bundle and the host of the authority the connection
// is made for (its DNS name or IP address), as crypto/tls verifies
// against RootCAs and ServerName — which cannot follow a bundle that
// changes. The authority comes from gRPC for each handshake, so an IP
// address, for which crypto/tls sends no server name, is checked too.
func ClientCredentials(src Source) credentials.TransportCredentials {
	return &clientCreds{TransportCredentials: credentials.NewTLS(clientConfig(src, "")), src: src}
}

type clientCreds struct {
	credentials.TransportCredentials
	src      Source
	override string // OverrideServerName
}

// ClientHandshake verifies the server for the host of authority.
func (c *clientCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	host := authority
	if c.override != "" {
		host = c.override
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if host == "" {
		return nil, nil, errors.New("tls: no server name to verify the server against")
	}
	conf := clientConfig(c.src, host)
	conf.ServerName = host
	return credentials.NewTLS(conf).ClientHandshake(ctx, authority, raw)
}

// Clone implements credentials.TransportCredentials.
func (c *clientCreds) Clone() credentials.TransportCredentials {
	return &clientCreds{TransportCredentials: c.TransportCredentials.Clone(), src: c.src, override: c.override}
}

// OverrideServerName implements credentials.TransportCredentials: the
// name is verified instead of the authority's host, and reported by Info.
func (c *clientCreds) OverrideServerName(name string) error {
	c.override = name
	//lint:ignore SA1019 forwarding the interface's own method, deprecated but still part of it
	return c.TransportCredentials.OverrideServerName(name)
}

// clientConfig is the TLS configuration of one handshake with the server
// named host (empty: only for the credentials' Info).
func clientConfig(src Source, host string) *tls.Config {
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
			return verifyServer(src, cs, host)
		},
	}
}

func verifyServer(src Source, cs tls.ConnectionState, host string) error {
	if host == "" {
		return errors.New("no server name to verify the server against")
	}
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
		DNSName:       host,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return fmt.Errorf("verify server certificate: %w", err)
	}
	return nil
}
