package server

import (
	"crypto/x509"
	"fmt"
	"os"
)

func loadCertPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("server TLS: read client CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("server TLS: %s holds no PEM certificate", path)
	}
	return pool, nil
}
