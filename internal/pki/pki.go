// Package pki generates the certificates Custos needs for tests and for
// `custos dev`: a throwaway certificate authority and the server and client
// certificates it signs. Everything is made at run time from crypto/rand;
// no key or certificate is ever committed to the repository.
//
// Keys are ECDSA P-256. Certificates and keys are PEM encoded, keys as
// PKCS#8 "PRIVATE KEY" blocks. The package is for development and testing
// only; production certificates come from the operator's own PKI (SPIRE,
// cert-manager, a corporate CA).
package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"
)

// PEM block types written and accepted by this package.
const (
	pemCertificate = "CERTIFICATE"
	pemPrivateKey  = "PRIVATE KEY"
)

// clockSkew is how far into the past NotBefore is set, so that a certificate
// issued on one machine is already valid on a peer whose clock lags a little.
const clockSkew = 5 * time.Minute

// CA is a certificate authority that can issue server and client
// certificates. Its private key is held privately and never exported except
// by WriteDevFiles, which persists it with mode 0600.
type CA struct {
	cert    *x509.Certificate
	certPEM []byte
	key     *ecdsa.PrivateKey
}

// IssueRequest describes a leaf certificate for CA.Issue. At least one of
// CommonName, DNSNames, IPAddresses and URIs must be set, and at least one of
// Server and Client.
type IssueRequest struct {
	// CommonName is the subject common name. Custos uses it as the caller's
	// identity when the certificate carries no SPIFFE ID.
	CommonName string
	// DNSNames are DNS subject alternative names, e.g. "localhost".
	DNSNames []string
	// IPAddresses are IP subject alternative names, e.g. 127.0.0.1.
	IPAddresses []net.IP
	// URIs are URI subject alternative names; a SPIFFE ID such as
	// spiffe://custos.dev/dev-client goes here.
	URIs []*url.URL
	// Server adds the TLS server authentication extended key usage.
	Server bool
	// Client adds the TLS client authentication extended key usage.
	Client bool
	// Validity is how long the certificate is valid from now. It must be
	// positive; a certificate never outlives its CA, so NotAfter is capped
	// at the CA's NotAfter.
	Validity time.Duration
}

// NewCA creates a self-signed certificate authority with a fresh P-256 key.
// The CA may sign only leaf certificates (path length zero).
func NewCA(commonName string, validity time.Duration) (*CA, error) {
	if commonName == "" {
		return nil, errors.New("pki: CA common name is empty")
	}
	if validity <= 0 {
		return nil, fmt.Errorf("pki: CA validity must be positive, got %v", validity)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: generate CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("pki: create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parse new CA certificate: %w", err)
	}
	return &CA{cert: cert, certPEM: encodeCert(der), key: key}, nil
}

// LoadCA reconstructs a CA from its PEM certificate and its PEM PKCS#8
// private key, as written by WriteDevFiles. It checks that the certificate
// is a CA certificate allowed to sign certificates and that the key belongs
// to it. Errors never include key material.
func LoadCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: CA certificate: %w", err)
	}
	if !cert.BasicConstraintsValid || !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, errors.New("pki: certificate is not a CA certificate")
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: CA key: %w", err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, errors.New("pki: CA key does not match the CA certificate")
	}
	return &CA{cert: cert, certPEM: encodeCert(cert.Raw), key: key}, nil
}

// CertPEM returns a copy of the CA certificate, PEM encoded, for use as a
// trust root (tls.Config RootCAs or ClientCAs).
func (ca *CA) CertPEM() []byte { return bytes.Clone(ca.certPEM) }

// Issue creates a leaf certificate signed by ca with a fresh P-256 key and
// returns the certificate and its PKCS#8 private key, both PEM encoded.
func (ca *CA) Issue(req IssueRequest) (certPEM, keyPEM []byte, err error) {
	if req.CommonName == "" && len(req.DNSNames) == 0 && len(req.IPAddresses) == 0 && len(req.URIs) == 0 {
		return nil, nil, errors.New("pki: issue: no common name or subject alternative name")
	}
	if !req.Server && !req.Client {
		return nil, nil, errors.New("pki: issue: neither Server nor Client usage requested")
	}
	if req.Validity <= 0 {
		return nil, nil, fmt.Errorf("pki: issue: validity must be positive, got %v", req.Validity)
	}
	for i, u := range req.URIs {
		if u == nil {
			return nil, nil, fmt.Errorf("pki: issue: URIs[%d] is nil", i)
		}
	}
	var usages []x509.ExtKeyUsage
	if req.Server {
		usages = append(usages, x509.ExtKeyUsageServerAuth)
	}
	if req.Client {
		usages = append(usages, x509.ExtKeyUsageClientAuth)
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: issue: generate key: %w", err)
	}
	now := time.Now()
	notAfter := now.Add(req.Validity)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: req.CommonName},
		DNSNames:              req.DNSNames,
		IPAddresses:           req.IPAddresses,
		URIs:                  req.URIs,
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           usages,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: issue: create certificate: %w", err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return encodeCert(der), keyPEM, nil
}

// keyPEM returns the CA's private key as a PEM PKCS#8 block. It is used only
// to persist the dev CA.
func (ca *CA) keyPEM() ([]byte, error) { return encodeKey(ca.key) }

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: der})
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		// The underlying error cannot contain key bytes, but stay bland.
		return nil, errors.New("pki: cannot encode private key as PKCS#8")
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPrivateKey, Bytes: der}), nil
}

// parseCertPEM parses the first PEM block of data, which must be a
// certificate.
func parseCertPEM(data []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != pemCertificate {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, err
	}
	return cert, nil
}

// parseKeyPEM parses the first PEM block of data, which must be a PKCS#8
// ECDSA private key. Its errors never carry parser detail, so that no part
// of a malformed key can reach a log.
func parseKeyPEM(data []byte) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != pemPrivateKey {
		return nil, errors.New("no PEM PRIVATE KEY block")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, errors.New("not a valid PKCS#8 private key")
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New("not an ECDSA private key")
	}
	return key, nil
}
