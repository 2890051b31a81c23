// Package bench is Custos's load tool (`custos bench`): a closed-loop load
// generator for the gRPC API, and the baseline it measures against — a bare
// mutual-TLS gRPC server with the same TLS configuration, the same service
// and message types and no Custos work, run in a process of its own — so
// every figure is a ratio to a baseline taken in the same run, on the same
// machine, the way users see it (docs/performance.md).
package bench

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/custos-kms/custos/internal/slab"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"github.com/custos-kms/custos/server"
)

// overhead is what a Custos AES-GCM ciphertext adds to its plaintext: the
// 5-byte Tink prefix, the 12-byte nonce and the 16-byte tag. The baseline's
// answers carry as many bytes, so both sides move the same data.
const overhead = 5 + 12 + 16

// baseline answers CryptoService calls with no Custos work: single calls
// echo their payload (padded to the size of a real answer), batch calls seal
// every item with AES-256-GCM under one key and a fresh random nonce, so a
// batch ratio isolates what Custos adds to the cryptography itself. It has
// no key lookup, no authorization, no interceptors. Methods it does not
// answer (password hashing, whose cost is the hash itself) are not part of
// any baseline.
type baseline struct {
	custosv1.UnimplementedCryptoServiceServer
	aead cipher.AEAD
	// stand is the last ciphertext of another server's a batch item
	// brought, with the ciphertext of this key that stands for it (see own).
	stand atomic.Pointer[standIn]
}

// standIn pairs a ciphertext the baseline cannot open, and its associated
// data, with one of its own key that holds the same plaintext.
type standIn struct {
	theirs, aad, own []byte
}

func newBaseline() (*baseline, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &baseline{aead: aead}, nil
}

// seal is the baseline's per-item work: AES-256-GCM with a random nonce,
// laid out as Custos lays out a ciphertext.
func (b *baseline) seal(pt, aad []byte) ([]byte, error) {
	out := make([]byte, 5+12, 5+12+len(pt)+16)
	out[0] = 1
	if _, err := rand.Read(out[5:17]); err != nil {
		return nil, err
	}
	return b.aead.Seal(out, out[5:17], pt, aad), nil
}

var okStatus = &statuspb.Status{}

func pad(p []byte) []byte { return append(make([]byte, overhead, overhead+len(p)), p...) }

func unpad(c []byte) []byte {
	if len(c) < overhead {
		return c
	}
	return c[overhead:]
}

func (b *baseline) Encrypt(_ context.Context, req *custosv1.EncryptRequest) (*custosv1.EncryptResponse, error) {
	return &custosv1.EncryptResponse{Ciphertext: pad(req.GetPlaintext()), KeyVersion: 1}, nil
}

func (b *baseline) Decrypt(_ context.Context, req *custosv1.DecryptRequest) (*custosv1.DecryptResponse, error) {
	return &custosv1.DecryptResponse{Plaintext: unpad(req.GetCiphertext()), KeyVersion: 1}, nil
}

func (b *baseline) BlindIndex(_ context.Context, req *custosv1.BlindIndexRequest) (*custosv1.BlindIndexResponse, error) {
	mac := make([]byte, 5+32)
	copy(mac[5:], req.GetData())
	return &custosv1.BlindIndexResponse{Entries: []*custosv1.BlindIndexResponse_Entry{{KeyVersion: 1, Mac: mac}}}, nil
}

func (b *baseline) GenerateDataKey(_ context.Context, _ *custosv1.GenerateDataKeyRequest) (*custosv1.GenerateDataKeyResponse, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	return &custosv1.GenerateDataKeyResponse{Plaintext: key, Wrapped: pad(key), KeyVersion: 1}, nil
}

func (b *baseline) EncryptBatch(_ context.Context, req *custosv1.EncryptBatchRequest) (*custosv1.EncryptBatchResponse, error) {
	items := req.GetItems()
	// Results allocated together, as Custos's are, so that the ratio does
	// not count that saving as Custos's.
	resp := &custosv1.EncryptBatchResponse{Results: slab.Of[custosv1.EncryptBatchResponse_Result](len(items))}
	for i, it := range items {
		ct, err := b.seal(it.GetPlaintext(), it.GetAssociatedData())
		if err != nil {
			return nil, err
		}
		r := resp.Results[i]
		r.Ciphertext, r.KeyVersion, r.Status = ct, 1, okStatus
	}
	return resp, nil
}

// own returns a ciphertext of the baseline's key standing for theirs (a
// ciphertext the bench took from the baseline's Encrypt, which echoes): the
// same plaintext under the same associated data, sealed on first sight and
// kept, so that each item costs what a real decryption costs, one AES-GCM
// open, and not a seal. The bench sends one ciphertext in every item; one
// that differs from the last is sealed anew.
func (b *baseline) own(theirs, aad []byte) ([]byte, error) {
	if s := b.stand.Load(); s != nil && bytes.Equal(s.theirs, theirs) && bytes.Equal(s.aad, aad) {
		return s.own, nil
	}
	own, err := b.seal(unpad(theirs), aad)
	if err != nil {
		return nil, err
	}
	b.stand.Store(&standIn{theirs: bytes.Clone(theirs), aad: bytes.Clone(aad), own: own})
	return own, nil
}

// open opens a ciphertext seal made.
func (b *baseline) open(ct, aad []byte) ([]byte, error) {
	if len(ct) < 5+12 {
		return nil, errors.New("baseline: ciphertext too short")
	}
	return b.aead.Open(nil, ct[5:17], ct[17:], aad)
}

// DecryptBatch opens, for each item, the baseline's own ciphertext of the
// item's plaintext (it cannot open Custos's: it has not their key): the
// AES-GCM open a real decryption does, and the answer it gives.
func (b *baseline) DecryptBatch(_ context.Context, req *custosv1.DecryptBatchRequest) (*custosv1.DecryptBatchResponse, error) {
	items := req.GetItems()
	// Results allocated together, as Custos's are, so that the ratio does
	// not count that saving as Custos's.
	resp := &custosv1.DecryptBatchResponse{Results: slab.Of[custosv1.DecryptBatchResponse_Result](len(items))}
	for i, it := range items {
		own, err := b.own(it.GetCiphertext(), it.GetAssociatedData())
		if err != nil {
			return nil, err
		}
		pt, err := b.open(own, it.GetAssociatedData())
		if err != nil {
			return nil, err
		}
		r := resp.Results[i]
		r.Plaintext, r.KeyVersion, r.Status = pt, 1, okStatus
	}
	return resp, nil
}

// RewrapBatch does what Custos does with the bench's items, ciphertexts of
// the key's primary version: it opens each and answers it unchanged (a
// ciphertext of an older version would be sealed again too; the bench
// sends none).
func (b *baseline) RewrapBatch(_ context.Context, req *custosv1.RewrapBatchRequest) (*custosv1.RewrapBatchResponse, error) {
	items := req.GetItems()
	// Results allocated together, as Custos's are, so that the ratio does
	// not count that saving as Custos's.
	resp := &custosv1.RewrapBatchResponse{Results: slab.Of[custosv1.RewrapBatchResponse_Result](len(items))}
	for i, it := range items {
		own, err := b.own(it.GetCiphertext(), it.GetAssociatedData())
		if err != nil {
			return nil, err
		}
		if _, err := b.open(own, it.GetAssociatedData()); err != nil {
			return nil, err
		}
		r := resp.Results[i]
		r.Ciphertext, r.KeyVersion, r.Status = it.GetCiphertext(), 1, okStatus
	}
	return resp, nil
}

// StreamWorkers is the grpc.NumStreamWorkers of the baseline, the same as
// Custos's server's.
const StreamWorkers = 256

// ServeBaseline serves the baseline on lis with tlsConf (Custos's own
// server TLS configuration) and maxMsg as the message size limit, until ctx
// is done.
func ServeBaseline(ctx context.Context, lis net.Listener, tlsConf *tls.Config, maxMsg int) error {
	impl, err := newBaseline()
	if err != nil {
		return fmt.Errorf("baseline: %w", err)
	}
	// The transport settings Custos's server uses (server.NewGRPCServer),
	// stream workers and the calls a connection may carry at once included,
	// so that the ratio isolates Custos's work. (Its timer that closes a
	// connection when the client certificate expires is left out: one per
	// connection, no work per call.)
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsConf)), grpc.MaxRecvMsgSize(maxMsg),
		grpc.NumStreamWorkers(StreamWorkers), grpc.MaxConcurrentStreams(server.MaxStreamsPerConnection), grpc.MaxHeaderListSize(server.MaxHeaderListSize),
		grpc.KeepaliveEnforcementPolicy(server.KeepaliveEnforcement))
	custosv1.RegisterCryptoServiceServer(gs, impl)
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(lis) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		gs.Stop()
		<-errc
		return nil
	}
}

// ServeMetrics serves the process's Go and process metrics (/metrics, in
// the Prometheus text format) and Go's profiles (/debug/pprof/) on lis
// until ctx is done: the baseline's allocation count, read as Custos's is
// from its ops listener, and its profiles, to compare with Custos's.
func ServeMetrics(ctx context.Context, lis net.Listener) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	server.HandlePprof(mux)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	stop := context.AfterFunc(ctx, func() { _ = srv.Close() })
	defer stop()
	_ = srv.Serve(lis) // returns when closed
}
