package client

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
	"google.golang.org/grpc/codes"

	"github.com/custos-kms/custos/envelope"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// Local mode defaults (docs/client.md explains the choice).
const (
	// DefaultEnvelopeMaxAge: a data key encrypts for at most 5 minutes, so
	// a rotation reaches new ciphertexts within 5 minutes.
	DefaultEnvelopeMaxAge = 5 * time.Minute
	// DefaultEnvelopeMaxMessages: at most 2^20 fields per data key, far
	// below AES-GCM's 2^32 random-nonce bound.
	DefaultEnvelopeMaxMessages = 1 << 20
	// DefaultEnvelopeMaxBytes: at most 1 GiB of plaintext per data key.
	DefaultEnvelopeMaxBytes = 1 << 30
	// DefaultEnvelopeCacheSize: data keys cached for decryption.
	DefaultEnvelopeCacheSize = 1000
	// DefaultEnvelopeDecryptTTL: a cached data key decrypts for at most 5
	// minutes after it was unwrapped, so a disabled version or a tenant
	// scheduled for deletion stops local decryption within 5 minutes.
	DefaultEnvelopeDecryptTTL = 5 * time.Minute
)

// EnvelopeOptions configure local mode; zero fields take the defaults.
type EnvelopeOptions struct {
	// MaxAge, MaxMessages and MaxBytes bound the use of one data key for
	// encryption (AWS Encryption SDK's three thresholds): whichever is
	// reached first, the next encryption gets a new data key. MaxMessages
	// is at most 2^24−2 and MaxBytes 2^40−2.
	MaxAge      time.Duration
	MaxMessages uint64
	MaxBytes    uint64
	// CacheSize bounds the data keys cached for decryption (LRU);
	// DecryptTTL is how long one stays.
	CacheSize  int
	DecryptTTL time.Duration
	// MaxPlaintext bounds one field: at most (and by default)
	// MaxEnvelopePlaintext, the API's ceiling. A deployment may set lower
	// limits (limits.max_plaintext_bytes, 64 KiB by default, and
	// limits.max_message_bytes): set MaxPlaintext to its
	// max_plaintext_bytes so that local and remote encryption refuse the
	// same fields, and every envelope fits the requests with which the
	// service's Decrypt (polyglot readers, decrypt-only readers) and
	// Rewrap take it.
	MaxPlaintext int
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Envelope encrypts and decrypts fields locally with data keys from the key
// name (client local mode): a data key from GenerateDataKey seals many
// fields under the limits of its options, and unwrapped data keys are cached
// for decryption. The service still holds the keys that wrap data keys: it
// sees one GenerateDataKey per data key and one Decrypt per data key a
// client has not cached, never the fields. Its ciphertexts are envelopes
// (docs/formats.md), which the service's Decrypt and Rewrap also take. Safe
// for concurrent use; create one per key with [Client.Envelope].
type Envelope struct {
	c    *Client
	name string
	opts EnvelopeOptions

	cur atomic.Pointer[encKey]
	sf  singleflight.Group

	mu  sync.Mutex
	gen uint64 // bumped by Purge: keys fetched before it are not kept
	// cache and lru are the decryption cache, least recently used evicted
	// first. A map and container/list rather than a cache library
	// (golang-lru's simplelru): indexing the map with string(wrapped)
	// does not allocate, and a library's Get(string(wrapped)) allocates
	// once per decryption.
	cache map[string]*list.Element // wrapped key → *decKey element
	lru   list.List
	swept time.Time // when the cache was last swept of expired keys
	// refused (wrapped key → unix ns, under mu): data keys the service
	// refused to unwrap for this caller (no datakey permission, or not
	// authentic). Until then envelopes under that data key go straight to
	// the service's Decrypt instead of asking for an unwrap that will be
	// refused again; other data keys are not affected.
	refused map[string]int64
}

// unwrapRefusalTTL is how long a refused unwrap sends envelopes of that data
// key straight to the service; maxRefused bounds how many are remembered.
const (
	unwrapRefusalTTL = 10 * time.Second
	maxRefused       = 1024
)

// encKey is the data key encryptions use now.
type encKey struct {
	k       *envelope.Key
	expires time.Time
	// used counts messages (high 24 bits) and bytes (low 40) in one word:
	// one atomic add per encryption, the only write shared by callers.
	used atomic.Uint64
}

// Packing of encKey.used; the options are capped to fit.
const (
	bytesBits   = 40
	maxMessages = 1<<(64-bytesBits) - 1
	maxBytes    = 1<<bytesBits - 1
)

// decKey is a cached data key for decryption, by the exact wrapping that
// was unwrapped to it: an envelope whose wrapped key was swapped for
// another is never opened from the cache. (The service gives all the
// envelopes of one data key that it rewraps one new wrapping, so the cache
// keeps working after a rewrap.)
type decKey struct {
	wrapped string
	k       *envelope.Key
	expires time.Time
}

// testHookInstall, set by tests only, runs between caching a fetched data
// key (wrapped) and making it current.
var testHookInstall func(wrapped []byte)

// MaxEnvelopePlaintext is the largest field local mode encrypts: the
// service decrypts and rewraps envelopes up to its ciphertext limit, so
// every envelope stays readable by polyglot callers.
const MaxEnvelopePlaintext = custosv1.MaxPlaintextBytes // the API's plaintext ceiling

// fetchTimeout bounds a data-key call shared by concurrent callers (it does
// not end with the first caller's context, nor outlast 30 s for a caller
// whose own deadline is later: one stuck fetch must not hold every later
// caller of the Envelope for that caller's deadline).
const fetchTimeout = 30 * time.Second

// Envelope returns local mode for the ENCRYPT key name
// ("tenants/{tenant}/keys/{key}"). The caller needs the datakey permission
// to encrypt, and the datakey permission to decrypt locally.
func (c *Client) Envelope(name string, opts EnvelopeOptions) *Envelope {
	if opts.MaxAge <= 0 {
		opts.MaxAge = DefaultEnvelopeMaxAge
	}
	if opts.MaxMessages == 0 {
		opts.MaxMessages = DefaultEnvelopeMaxMessages
	}
	if opts.MaxBytes == 0 {
		opts.MaxBytes = DefaultEnvelopeMaxBytes
	}
	opts.MaxMessages = min(opts.MaxMessages, maxMessages-1)
	opts.MaxBytes = min(opts.MaxBytes, maxBytes-1)
	if opts.CacheSize <= 0 {
		opts.CacheSize = DefaultEnvelopeCacheSize
	}
	if opts.DecryptTTL <= 0 {
		opts.DecryptTTL = DefaultEnvelopeDecryptTTL
	}
	if opts.MaxPlaintext <= 0 || opts.MaxPlaintext > MaxEnvelopePlaintext {
		opts.MaxPlaintext = MaxEnvelopePlaintext
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Envelope{c: c, name: name, opts: opts, cache: map[string]*list.Element{}}
}

// Encrypt seals plaintext (at most EnvelopeOptions.MaxPlaintext bytes) locally,
// bound to associatedData, with the current data key, getting a new one
// from the service when the current one has reached a limit. Its cost,
// with a data key in hand, is one AES-256-GCM seal and one allocation.
func (e *Envelope) Encrypt(ctx context.Context, plaintext, associatedData []byte) ([]byte, error) {
	if e.c.closed.Load() {
		return nil, e.closed("local encrypt")
	}
	if err := checkLocalAD(e.op, "local encrypt", associatedData); err != nil {
		return nil, err
	}
	if len(plaintext) == 0 {
		// As the service refuses an empty field (and a larger one than
		// its limit, with MaxPlaintext set to it).
		return nil, localError(e.op("local encrypt"), codes.InvalidArgument, "plaintext must not be empty")
	}
	if limit := min(uint64(e.opts.MaxPlaintext), e.opts.MaxBytes); uint64(len(plaintext)) > limit {
		return nil, localError(e.op("local encrypt"), codes.InvalidArgument, "plaintext of %d bytes is larger than %d", len(plaintext), limit)
	}
	// Each round either seals or waits for a new data key; many callers at
	// once with a small MaxMessages may each lose a few rounds to the
	// others, so a caller goes on until its context ends, up to
	// maxEncryptRounds fetches.
	for range maxEncryptRounds {
		k := e.cur.Load()
		if k == nil || !e.opts.Now().Before(k.expires) || !k.take(uint64(len(plaintext)), e.opts) {
			if err := e.refresh(ctx, k); err != nil {
				if k != nil && !e.opts.Now().Before(k.expires) {
					// Past its age it serves no one: not kept while
					// fetches fail.
					e.cur.CompareAndSwap(k, nil)
				}
				return nil, err
			}
			continue
		}
		out, err := k.k.Seal(plaintext, associatedData)
		if err != nil {
			return nil, localError(e.op("local encrypt"), codes.Internal, "%v", err)
		}
		return out, nil
	}
	return nil, localError(e.op("local encrypt"), codes.ResourceExhausted, "data keys used up faster than they can be fetched")
}

// maxEncryptRounds bounds the data keys one local Encrypt waits for before
// it gives up (RESOURCE_EXHAUSTED): only callers far more numerous than a
// data key's MaxMessages get near it.
const maxEncryptRounds = 100

// take counts one message of n bytes against the key's limits, unless that
// would pass one: a refused attempt counts nothing, so the counters never
// wrap.
func (k *encKey) take(n uint64, o EnvelopeOptions) bool {
	for {
		used := k.used.Load()
		msgs, bytes := used>>bytesBits+1, used&maxBytes+n
		if msgs > o.MaxMessages || bytes > o.MaxBytes {
			return false
		}
		if k.used.CompareAndSwap(used, msgs<<bytesBits|bytes) {
			return true
		}
	}
}

// refresh replaces old (nil: none yet) with a new data key, once however
// many callers ask at the same time; each waits on its own context.
func (e *Envelope) refresh(ctx context.Context, old *encKey) error {
	if ctx.Err() != nil {
		// No fetch for a caller already gone: it would go on without it
		// (a GenerateDataKey audited and counted for nothing).
		return contextError(e.op("local encrypt"), ctx)
	}
	e.mu.Lock()
	gen := e.gen
	e.mu.Unlock()
	// One flight per generation: a caller after a Purge never waits on
	// a fetch from before it.
	ch := e.sf.DoChan("encrypt:"+strconv.FormatUint(gen, 10), func() (any, error) {
		if cur := e.cur.Load(); cur != old {
			return nil, nil // another caller refreshed it
		}
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fetchTimeout)
		defer cancel()
		dk, err := e.c.GenerateDataKey(fctx, e.name, []byte(envelope.DataKeyContext))
		if err != nil {
			return nil, fetchError(fctx, "local encrypt with "+e.name, err)
		}
		k, err := envelope.NewKey(dk.Plaintext, dk.Wrapped)
		clear(dk.Plaintext)
		if err != nil {
			return nil, localError("local encrypt with "+e.name, codes.Internal, "%v", err)
		}
		now := e.opts.Now()
		// Cached and made current under one lock, so a Purge comes
		// wholly before (the key is not kept) or wholly after (it goes).
		e.mu.Lock()
		defer e.mu.Unlock()
		if e.rememberLocked(gen, &decKey{wrapped: string(dk.Wrapped), k: k, expires: now.Add(e.opts.DecryptTTL)}) {
			if testHookInstall != nil {
				testHookInstall(dk.Wrapped)
			}
			// Over old, or over none: a caller whose context ended while
			// this fetch ran dropped old, past its age (Encrypt); the
			// fetch still serves the callers waiting on it. (A Purge
			// meanwhile made rememberLocked refuse.)
			nk := &encKey{k: k, expires: now.Add(e.opts.MaxAge)}
			if !e.cur.CompareAndSwap(old, nk) {
				e.cur.CompareAndSwap(nil, nk)
			}
		}
		return nil, nil
	})
	select {
	case r := <-ch:
		return r.Err
	case <-ctx.Done():
		return contextError(e.op("local encrypt"), ctx)
	}
}

// Decrypt opens an envelope locally, unwrapping its data key through the
// service unless it is cached. A ciphertext that is not an envelope (made
// by [Client.Encrypt]), or an envelope whose data key this caller may not
// unwrap (it holds decrypt but not datakey), is decrypted by the service.
// Every tampered, truncated or foreign ciphertext fails with
// [ErrInvalidCiphertext].
func (e *Envelope) Decrypt(ctx context.Context, ciphertext, associatedData []byte) ([]byte, error) {
	if e.c.closed.Load() {
		return nil, e.closed("decrypt")
	}
	if len(ciphertext) == 0 {
		// Truncated to nothing: no envelope, and no field the service
		// made (which it would refuse as a malformed request).
		return nil, invalidLocal(e.op("local decrypt"))
	}
	if !envelope.IsEnvelope(ciphertext) {
		pt, _, err := e.c.Decrypt(ctx, e.name, ciphertext, associatedData)
		return pt, err
	}
	if envelope.ReservedAssociatedData(associatedData) {
		return nil, invalidLocal(e.op("local decrypt")) // as the service answers
	}
	// No size limit here: an envelope sealed by an earlier client with
	// more associated data than the service takes stays readable locally.
	env, err := envelope.Parse(ciphertext)
	if err != nil {
		return nil, invalidLocal(e.op("local decrypt"))
	}
	k, err := e.dataKey(ctx, env)
	if errors.Is(err, errUnwrapRefused) {
		// The unwrap was refused: not authentic, or not this caller's to
		// unwrap. The service decides, as for any field.
		pt, _, err := e.c.Decrypt(ctx, e.name, ciphertext, associatedData)
		return pt, err
	}
	if err != nil {
		return nil, err
	}
	pt, err := env.Open(k, associatedData)
	if err != nil {
		return nil, invalidLocal(e.op("local decrypt"))
	}
	return pt, nil
}

// fetchError is the error of a shared data-key fetch that failed: when the
// fetch ran out of its own time (fetchTimeout), the service did not answer
// in time, which is UNAVAILABLE to the callers, whose own deadlines may not
// have passed (they get their own context's error if they have).
func fetchError(fctx context.Context, op string, err error) error {
	if fctx.Err() != nil {
		return localError(op, codes.Unavailable, "the service did not answer a data-key call within %v", fetchTimeout)
	}
	return err
}

// errUnwrapRefused: an unwrap the service refused a moment ago is not
// asked for again (refused).
var errUnwrapRefused = errors.New("custos: data key unwrap refused recently")

// noteRefused remembers, for unwrapRefusalTTL, that the service refused to
// unwrap wrapped, unless a Purge came since generation gen.
func (e *Envelope) noteRefused(gen uint64, wrapped []byte) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.gen != gen {
		return
	}
	now := e.opts.Now()
	if len(e.refused) >= maxRefused {
		// Those past their time go first; only if none has does the
		// whole memory go (each entry is a call saved, not a guard).
		for w, until := range e.refused {
			if now.UnixNano() >= until {
				delete(e.refused, w)
			}
		}
	}
	if e.refused == nil || len(e.refused) >= maxRefused {
		e.refused = map[string]int64{}
	}
	e.refused[string(wrapped)] = now.Add(unwrapRefusalTTL).UnixNano()
}

// refusedLocked reports, with e.mu held, whether the service refused to
// unwrap wrapped within unwrapRefusalTTL.
func (e *Envelope) refusedLocked(wrapped []byte, now time.Time) bool {
	until, ok := e.refused[string(wrapped)]
	if ok && now.UnixNano() >= until {
		delete(e.refused, string(wrapped))
		return false
	}
	return ok
}

// op names an operation of e for an error message; built only on the
// error paths, so the success path allocates nothing for it.
func (e *Envelope) op(verb string) string { return verb + " with " + e.name }

// checkLocalAD refuses the associated data the service would: more than
// envelope.MaxAssociatedData bytes, or reserved for data keys. Local mode
// then never makes an envelope the service cannot decrypt or rewrap.
func checkLocalAD(op func(string) string, verb string, ad []byte) error {
	switch {
	case len(ad) > envelope.MaxAssociatedData:
		return localError(op(verb), codes.InvalidArgument, "associated_data: %d bytes exceed %d", len(ad), envelope.MaxAssociatedData)
	case envelope.ReservedAssociatedData(ad):
		return localError(op(verb), codes.InvalidArgument, "associated_data: the prefix %q and the value %q are reserved for data keys", envelope.DataKeyAADPrefix, envelope.DataKeyContext)
	}
	return nil
}

// closed fails a local operation on a closed client, as its remote calls
// fail, and drops the envelope's data keys.
func (e *Envelope) closed(verb string) error {
	e.Purge()
	return fmt.Errorf("custos: %s: %w", e.op(verb), &Error{Code: codes.Canceled, Message: "the client is closed", cause: ErrClosed})
}

func invalidLocal(op string) error { return notAuthentic(op, "ciphertext is not authentic") }

// notAuthentic is op's ErrInvalidCiphertext, saying msg.
func notAuthentic(op, msg string) error {
	return fmt.Errorf("custos: %s: %w", op, &Error{Code: codes.InvalidArgument, Reason: ReasonCiphertextNotAuthentic, Message: msg})
}

// dataKey returns the data key env commits to, from the cache or (one call
// however many ask at once) by unwrapping env's wrapped key.
func (e *Envelope) dataKey(ctx context.Context, env *envelope.Envelope) (*envelope.Key, error) {
	now := e.opts.Now()
	e.mu.Lock()
	gen := e.gen
	k, ok := e.lookupLocked(env.Wrapped, now)
	refused := !ok && e.refusedLocked(env.Wrapped, now)
	e.mu.Unlock()
	switch {
	case ok:
		return k, nil
	case refused:
		return nil, errUnwrapRefused
	case ctx.Err() != nil:
		return nil, contextError(e.op("local decrypt"), ctx) // no unwrap for a caller already gone
	}
	// A copy: the unwrap goes on for other callers after this one may have
	// given up and reused its ciphertext's buffer.
	ws := string(env.Wrapped)
	// One flight per generation and wrapping: a caller after a Purge
	// asks the service again.
	ch := e.sf.DoChan("decrypt:"+strconv.FormatUint(gen, 10)+":"+ws, func() (any, error) {
		wrapped := []byte(ws)
		// A flight that ended between this caller's cache miss and now
		// cached the key: no second unwrap.
		e.mu.Lock()
		cached, ok := e.lookupLocked(wrapped, e.opts.Now())
		e.mu.Unlock()
		if ok {
			return cached, nil
		}
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fetchTimeout)
		defer cancel()
		dk, err := e.c.DecryptDataKey(fctx, e.name, wrapped, []byte(envelope.DataKeyContext))
		if errors.Is(err, ErrInvalidCiphertext) || errors.Is(err, ErrPermissionDenied) {
			// Not authentic, or not this caller's to unwrap: remembered,
			// so that the next envelopes of this data key go straight to
			// the service.
			e.noteRefused(gen, wrapped)
			return nil, fmt.Errorf("%w: %w", errUnwrapRefused, err)
		}
		if err != nil {
			return nil, fetchError(fctx, "local decrypt with "+e.name, err)
		}
		k, err := envelope.NewKey(dk, wrapped)
		clear(dk)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", errUnwrapRefused, invalidLocal("local decrypt with "+e.name))
		}
		e.remember(gen, &decKey{wrapped: ws, k: k, expires: e.opts.Now().Add(e.opts.DecryptTTL)})
		return k, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*envelope.Key), nil
	case <-ctx.Done():
		return nil, contextError(e.op("local decrypt"), ctx)
	}
}

// lookupLocked returns the cached data key of wrapping w if it is still
// good (dropping it if not), with e.mu held. Indexing with string(w) does
// not allocate.
func (e *Envelope) lookupLocked(w []byte, now time.Time) (*envelope.Key, bool) {
	el, ok := e.cache[string(w)]
	if !ok {
		return nil, false
	}
	d := el.Value.(*decKey)
	if !now.Before(d.expires) {
		e.lru.Remove(el)
		delete(e.cache, d.wrapped)
		return nil, false
	}
	e.lru.MoveToFront(el)
	return d.k, true
}

// remember caches a data key for decryption, evicting the least recently
// used beyond CacheSize, unless a Purge came since gen was read; it
// reports whether it kept the key.
func (e *Envelope) remember(gen uint64, d *decKey) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.rememberLocked(gen, d)
}

// rememberLocked is remember with e.mu held. It also drops the data keys
// past their decrypt TTL, so that keys no call looks up again (a writer's
// own) are not kept until the cache is full: a walk of at most CacheSize
// entries, at most once a second.
func (e *Envelope) rememberLocked(gen uint64, d *decKey) bool {
	if gen != e.gen {
		return false
	}
	if now := e.opts.Now(); now.Sub(e.swept) >= time.Second {
		e.swept = now
		for el := e.lru.Back(); el != nil; {
			prev := el.Prev()
			if old := el.Value.(*decKey); !now.Before(old.expires) {
				e.lru.Remove(el)
				delete(e.cache, old.wrapped)
			}
			el = prev
		}
	}
	if el, ok := e.cache[d.wrapped]; ok {
		e.lru.Remove(el)
	}
	e.cache[d.wrapped] = e.lru.PushFront(d)
	for e.lru.Len() > e.opts.CacheSize {
		old := e.lru.Back()
		e.lru.Remove(old)
		delete(e.cache, old.Value.(*decKey).wrapped)
	}
	return true
}

// Purge forgets every data key: the next encryption gets a new one, and
// every decryption asks the service again (so a disabled version or a
// deleted tenant takes effect at once).
func (e *Envelope) Purge() {
	e.mu.Lock()
	e.gen++ // keys being fetched now are not kept
	clear(e.refused)
	clear(e.cache)
	e.lru.Init()
	e.cur.Store(nil)
	e.mu.Unlock()
}
