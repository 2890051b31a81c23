package vault

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"
)

// loginFunc obtains a token. ttl is zero when the token's lifetime is
// unknown or unlimited.
type loginFunc func(ctx context.Context, c *api.Client) (token string, ttl time.Duration, err error)

// newLogin checks that exactly one auth method is configured and returns
// how to obtain a token with it, and whether logging in again can yield
// another token (not so for a literal token).
func newLogin(a Auth) (loginFunc, bool, error) {
	n := 0
	for _, set := range []bool{a.Token != "", a.TokenFile != "", a.AppRole != nil, a.Cert != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return nil, false, errors.New("vault root: configure exactly one auth method: token, token file, AppRole or cert")
	}
	switch {
	case a.Token != "":
		token := a.Token
		return func(context.Context, *api.Client) (string, time.Duration, error) { return token, 0, nil }, false, nil
	case a.TokenFile != "":
		path := a.TokenFile
		return func(context.Context, *api.Client) (string, time.Duration, error) {
			t, err := readSecretFile("token", path)
			return t, 0, err
		}, true, nil
	case a.AppRole != nil:
		ar := *a.AppRole
		if ar.RoleID == "" {
			return nil, false, errors.New("vault root: AppRole auth needs a role_id")
		}
		if (ar.SecretID == "") == (ar.SecretIDFile == "") {
			return nil, false, errors.New("vault root: AppRole auth needs exactly one of secret_id and secret_id_file")
		}
		mount := mountOr(ar.Mount, "approle")
		return func(ctx context.Context, c *api.Client) (string, time.Duration, error) {
			secretID := ar.SecretID
			if ar.SecretIDFile != "" {
				var err error
				if secretID, err = readSecretFile("AppRole secret_id", ar.SecretIDFile); err != nil {
					return "", 0, err
				}
			}
			return login(ctx, c, "auth/"+mount+"/login", map[string]any{"role_id": ar.RoleID, "secret_id": secretID})
		}, true, nil
	default:
		ca := *a.Cert
		if ca.CertFile == "" || ca.KeyFile == "" {
			return nil, false, errors.New("vault root: cert auth needs a client certificate file and key file")
		}
		mount := mountOr(ca.Mount, "cert")
		data := map[string]any{}
		if ca.Role != "" {
			data["name"] = ca.Role
		}
		return func(ctx context.Context, c *api.Client) (string, time.Duration, error) {
			return login(ctx, c, "auth/"+mount+"/login", data)
		}, true, nil
	}
}

func mountOr(m, def string) string {
	if m = strings.Trim(m, "/"); m == "" {
		return def
	}
	return m
}

// login writes to an auth method's login path with a token-less client.
func login(ctx context.Context, c *api.Client, path string, data map[string]any) (string, time.Duration, error) {
	s, err := c.Logical().WriteWithContext(ctx, path, data)
	if err != nil {
		var re *api.ResponseError
		if errors.As(err, &re) && (re.StatusCode == http.StatusBadRequest || re.StatusCode == http.StatusForbidden) {
			// Vault says "invalid role or secret ID", "invalid certificate", ...:
			// the credentials are wrong, retrying will not help.
			return "", 0, fmt.Errorf("vault root: login at %s: %w: Vault answered %d: %s", path, ErrPermissionDenied, re.StatusCode, strings.Join(re.Errors, "; "))
		}
		return "", 0, classify(ctx, "login at "+path, err)
	}
	if s == nil || s.Auth == nil || s.Auth.ClientToken == "" {
		return "", 0, fmt.Errorf("vault root: login at %s: Vault's answer holds no token", path)
	}
	return s.Auth.ClientToken, time.Duration(s.Auth.LeaseDuration) * time.Second, nil
}

// session holds the provider's token and renews it. Logins are serialised
// by a one-slot semaphore that callers wait on only as long as their
// context allows.
type session struct {
	client      *api.Client // the operations client, whose token this sets
	loginClient *api.Client // token-less, for the login calls
	login       loginFunc
	renewable   bool
	now         func() time.Time
	logger      *slog.Logger
	sem         chan struct{}
	// base bounds the renewals made in the background; stop ends it
	// (Close), and renewals counts them.
	base     context.Context
	stop     context.CancelFunc
	renewals sync.WaitGroup

	// Guarded by sem.
	closed   bool      // Close was called: no renewal starts
	epoch    uint64    // incremented by each successful login
	refresh  time.Time // log in again after this; zero: no need
	expire   time.Time // the token is dead after this; zero: unknown
	renewing bool      // an early renewal runs in the background
	loggedIn time.Time // when the token in use was installed
}

// forbiddenRelogin is how long after a login a 403 is first checked
// against the token itself (lookup-self) before logging in again: a token
// that still looks itself up was refused by the policy, and logging in
// would not help. Each login makes a token and a lease, and uses up one
// use of a secret_id limited to a few; with a policy that denies, every
// call logged in. After it, a 403 logs in again (about once a minute while
// the policy denies): a role whose policies were changed since gives the
// new ones only to a new token. A token that may not look itself up (no
// default policy) logs in again at every 403.
const forbiddenRelogin = time.Minute

// earlyLoginTimeout bounds a renewal made while the token in use still
// has time, and earlyLoginRetry is how long after a failed one the next is
// tried (never past the token's expiry).
const (
	earlyLoginTimeout = 30 * time.Second
	earlyLoginRetry   = 10 * time.Second
)

func newSession(client, loginClient *api.Client, login loginFunc, renewable bool, now func() time.Time, logger *slog.Logger) *session {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	base, stop := context.WithCancel(context.Background())
	return &session{
		client:      client,
		loginClient: loginClient,
		login:       login,
		renewable:   renewable,
		now:         now,
		logger:      logger,
		sem:         make(chan struct{}, 1),
		base:        base,
		stop:        stop,
	}
}

// close ends a renewal running in the background, and waits for it.
func (s *session) close() {
	s.sem <- struct{}{}
	s.closed = true
	s.unlock()
	s.stop()
	s.renewals.Wait()
}

// canRenew reports whether another login could yield another token: false
// for a literal token, which can only be what it is.
func (s *session) canRenew() bool { return s.renewable }

func (s *session) lock(ctx context.Context) error {
	select {
	case s.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return classify(ctx, "login", ctx.Err())
	}
}

func (s *session) unlock() { <-s.sem }

// current makes sure a usable token is set, logging in when there is none
// yet or when the last one is due for renewal, and returns the epoch of the
// token in use.
func (s *session) current(ctx context.Context) (uint64, error) {
	if err := s.lock(ctx); err != nil {
		return 0, err
	}
	defer s.unlock()
	now := s.now()
	if s.epoch > 0 && (s.refresh.IsZero() || now.Before(s.refresh)) {
		return s.epoch, nil
	}
	if s.epoch > 0 && (s.expire.IsZero() || now.Before(s.expire)) {
		// Due for renewal while the token in use still has time: one
		// renewal runs in the background, and calls go on with the
		// token meanwhile. A slow or failing login (a standby cut off
		// from the active node) then costs no call its deadline.
		if !s.renewing && !s.closed {
			s.renewing = true
			seen := s.epoch
			s.renewals.Go(func() { s.renewEarly(seen) })
		}
		return s.epoch, nil
	}
	if err := s.doLogin(ctx); err != nil {
		return 0, err
	}
	return s.epoch, nil
}

// renewEarly logs in for a new token while the one of epoch seen still
// works, without holding the semaphore during the login; it ends within
// earlyLoginTimeout. A failure is tried again after earlyLoginRetry.
func (s *session) renewEarly(seen uint64) {
	ctx, cancel := context.WithTimeout(s.base, earlyLoginTimeout)
	defer cancel()
	token, ttl, err := s.login(ctx, s.loginClient)
	s.sem <- struct{}{} // no caller holds it for long: logins under it are bounded by their callers
	defer s.unlock()
	s.renewing = false
	switch {
	case s.closed:
		// The root was closed: nothing more to renew for.
	case s.epoch != seen:
		// Another login (Vault refused the token) made a newer one.
	case err != nil:
		s.refresh = s.now().Add(earlyLoginRetry)
		if !s.expire.IsZero() && s.refresh.After(s.expire) {
			s.refresh = s.expire
		}
		// No call fails yet, so nothing else would tell: a login that
		// keeps failing becomes an outage when the token expires.
		attrs := []any{"retry_at", s.refresh.UTC().Format(time.RFC3339), "error", err.Error()}
		if !s.expire.IsZero() {
			attrs = append(attrs, "token_expires", s.expire.UTC().Format(time.RFC3339))
		}
		s.logger.Warn("vault root: renewing the token failed; the current token serves until it expires", attrs...)
	default:
		s.install(token, ttl)
	}
}

// renew logs in again after Vault refused the token of epoch seen, unless
// another caller already has (then fresh reports a newer token to retry
// with), or the token is younger than forbiddenRelogin (then the refusal
// is the policy's, and fresh is false).
func (s *session) renew(ctx context.Context, seen uint64) (fresh bool, err error) {
	if err := s.lock(ctx); err != nil {
		return false, err
	}
	if s.epoch != seen {
		s.unlock()
		return true, nil
	}
	young := s.now().Sub(s.loggedIn) < forbiddenRelogin
	s.unlock()
	// Outside the semaphore: denied calls must not hold up the others.
	if young {
		if _, err := s.client.Auth().Token().LookupSelfWithContext(ctx); err == nil {
			return false, nil // the token is good: the policy refused
		}
	}
	if err := s.lock(ctx); err != nil {
		return false, err
	}
	defer s.unlock()
	if s.epoch != seen {
		return true, nil
	}
	return true, s.doLogin(ctx)
}

func (s *session) doLogin(ctx context.Context) error {
	token, ttl, err := s.login(ctx, s.loginClient)
	if err != nil {
		return err
	}
	s.install(token, ttl)
	return nil
}

// install makes token, valid for ttl (0: unknown), the one in use.
func (s *session) install(token string, ttl time.Duration) {
	s.client.SetToken(token)
	s.epoch++
	now := s.now()
	s.loggedIn = now
	s.refresh, s.expire = time.Time{}, time.Time{}
	if ttl > 0 {
		s.refresh = now.Add(ttl * 3 / 4)
		s.expire = now.Add(ttl)
	}
}
