package server

import (
	"crypto/tls"
	"crypto/x509"
	"testing"
)

// A configuration chosen per handshake is held to the same rules: one that
// is missing (nil, nil) or verifies clients against no CA is refused
// instead of crypto/tls falling back to the top-level configuration.
func TestPerHandshakeTLSConfigsAreChecked(t *testing.T) {
	for name, c := range map[string]*tls.Config{
		"none":    nil,
		"no CAs":  {MinVersion: tls.VersionTLS13, ClientAuth: tls.RequireAndVerifyClientCert},
		"no mTLS": {MinVersion: tls.VersionTLS13, ClientAuth: tls.RequestClientCert, ClientCAs: x509.NewCertPool()},
		"TLS 1.2": {MinVersion: tls.VersionTLS12, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: x509.NewCertPool()},
	} {
		top := &tls.Config{
			MinVersion: tls.VersionTLS13, ClientAuth: tls.RequireAndVerifyClientCert,
			GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return c, nil },
		}
		s := &Server{}
		get, err := s.perHandshake(top)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, err := get.GetConfigForClient(&tls.ClientHelloInfo{}); err == nil {
			t.Errorf("%s: a per-handshake configuration that breaks the rules was accepted", name)
		}
	}
}
