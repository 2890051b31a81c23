package root

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
)

// ErrBadEndpoint is wrapped by CheckEndpoint's errors.
var ErrBadEndpoint = errors.New("root: bad endpoint")

// CheckEndpoint checks a provider's endpoint URL: http or https, with a
// host, and plain http only to a loopback address (a local Vault Agent, an
// emulator), since tenant KEKs and credentials would cross the network in
// clear. Providers check at construction; the configuration checks the
// same earlier, naming its field.
func CheckEndpoint(endpoint string) error {
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return ErrBadEndpoint
	}
	if u.Scheme == "http" && !LoopbackHost(u.Hostname()) {
		return fmt.Errorf("%w: %w", ErrBadEndpoint, ErrPlainHTTP)
	}
	return nil
}

// ErrPlainHTTP is wrapped by CheckEndpoint's error for plain http to a
// host that is not a loopback address.
var ErrPlainHTTP = errors.New("plain http is allowed only to a loopback address; use https")

// LoopbackHost reports whether host (a URL's host name) is localhost or a
// loopback IP address.
func LoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
