package server_test

// Benchmarks of the data plane through the real server over loopback mutual
// TLS, each next to its baseline taken in the same run (DESIGN.md,
// "Performance targets"): a bare mTLS gRPC echo of the same payload, and a
// bare gRPC call whose handler seals the same batch with AES-256-GCM. The
// baselines run on their own grpc.Server with the same TLS configuration
// and no interceptors. Compare ratios, never absolute numbers:
//
//	go test -run '^$' -bench 'Encrypt|Echo' -benchtime 2s ./server/
//
// Encrypt throughput ratio = BenchmarkEcho ns/op ÷ BenchmarkEncrypt ns/op.

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"net"
	"runtime"
	"slices"
	"testing"
	"time"

	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/wrapperspb"

	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

const (
	benchPayloadBytes = 64
	benchBatchItems   = 100
	benchInFlight     = 64
)

var benchPayload = bytes.Repeat([]byte("f"), benchPayloadBytes)

// runInFlight runs call as two sub-benchmarks: one call in flight at a time
// (reporting the median latency too) and benchInFlight calls in flight.
func runInFlight(b *testing.B, call func(context.Context) error) {
	ctx := context.Background()
	if err := call(ctx); err != nil { // warm the connection and the caches
		b.Fatal(err)
	}
	b.Run("in-flight=1", func(b *testing.B) {
		lat := make([]time.Duration, 0, b.N)
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			t0 := time.Now()
			if err := call(ctx); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
		}
		b.StopTimer()
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-us")
	})
	b.Run("in-flight=64", func(b *testing.B) {
		// RunParallel starts parallelism × GOMAXPROCS goroutines.
		b.SetParallelism(max(1, benchInFlight/runtime.GOMAXPROCS(0)))
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := call(ctx); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// benchCustos starts a Custos server with tenant "bench" and key "k", and
// returns a connection to it as the admin.
func benchCustos(b *testing.B) *grpc.ClientConn {
	b.Helper()
	ts := start(b, newFiles(b), options{})
	setup(b, ts, "bench")
	return ts.conn(b, idAdmin)
}

// benchBaseline serves desc (with impl) on its own grpc.Server with the TLS
// configuration Custos uses and no interceptors, and returns a connection to
// it with a client certificate of the same CA.
func benchBaseline(b *testing.B, desc *grpc.ServiceDesc, impl any) *grpc.ClientConn {
	b.Helper()
	p := newPKI(b)
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(p.serverTLS)))
	gs.RegisterService(desc, impl)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go gs.Serve(lis) //nolint:errcheck // returns when stopped
	b.Cleanup(gs.GracefulStop)
	return dial(b, lis.Addr().String(), p.clientTLS(p.clientCert(b, idAdmin)))
}

func BenchmarkEncrypt(b *testing.B) {
	c := custosv1.NewCryptoServiceClient(benchCustos(b))
	req := &custosv1.EncryptRequest{Name: keyName("bench"), Plaintext: benchPayload}
	runInFlight(b, func(ctx context.Context) error {
		_, err := c.Encrypt(ctx, req)
		return err
	})
}

// echoDesc is a bare echo service registered by hand: no generated code, no
// new protos; the request and response are a wrapperspb.BytesValue.
var echoDesc = grpc.ServiceDesc{
	ServiceName: "custos.bench.Echo",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Echo",
		Handler: func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			in := new(wrapperspb.BytesValue)
			if err := dec(in); err != nil {
				return nil, err
			}
			return in, nil
		},
	}},
}

func BenchmarkEcho(b *testing.B) {
	conn := benchBaseline(b, &echoDesc, struct{}{})
	req := wrapperspb.Bytes(benchPayload)
	runInFlight(b, func(ctx context.Context) error {
		return conn.Invoke(ctx, "/custos.bench.Echo/Echo", req, new(wrapperspb.BytesValue))
	})
}

func benchBatchRequest() *custosv1.EncryptBatchRequest {
	req := &custosv1.EncryptBatchRequest{Name: keyName("bench"), Items: make([]*custosv1.EncryptBatchRequest_Item, benchBatchItems)}
	for i := range req.Items {
		req.Items[i] = &custosv1.EncryptBatchRequest_Item{Plaintext: benchPayload}
	}
	return req
}

func BenchmarkEncryptBatch(b *testing.B) {
	c := custosv1.NewCryptoServiceClient(benchCustos(b))
	req := benchBatchRequest()
	runInFlight(b, func(ctx context.Context) error {
		_, err := c.EncryptBatch(ctx, req)
		return err
	})
}

// sealer seals batch items the way a bare service would: one AES-256-GCM
// AEAD made once, a random nonce per item, and the same output layout as
// Custos (5-byte version prefix, nonce, ciphertext and tag).
type sealer struct{ aead cipher.AEAD }

func newSealer(b *testing.B) *sealer {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		b.Fatal(err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		b.Fatal(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		b.Fatal(err)
	}
	return &sealer{aead: aead}
}

var okItem = &statuspb.Status{}

func (s *sealer) sealBatch(req *custosv1.EncryptBatchRequest) (*custosv1.EncryptBatchResponse, error) {
	resp := &custosv1.EncryptBatchResponse{Results: make([]*custosv1.EncryptBatchResponse_Result, len(req.GetItems()))}
	for i, it := range req.GetItems() {
		pt := it.GetPlaintext()
		out := make([]byte, 5+s.aead.NonceSize(), 5+s.aead.NonceSize()+len(pt)+s.aead.Overhead())
		out[0] = 0x01
		binary.BigEndian.PutUint32(out[1:5], 1)
		if _, err := rand.Read(out[5:]); err != nil {
			return nil, err
		}
		out = s.aead.Seal(out, out[5:], pt, it.GetAssociatedData())
		resp.Results[i] = &custosv1.EncryptBatchResponse_Result{Ciphertext: out, KeyVersion: 1, Status: okItem}
	}
	return resp, nil
}

// sealBatchDesc is a bare service whose one method takes the same
// EncryptBatchRequest as Custos and seals every item with AES-256-GCM.
var sealBatchDesc = grpc.ServiceDesc{
	ServiceName: "custos.bench.SealBatch",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "SealBatch",
		Handler: func(srv any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			in := new(custosv1.EncryptBatchRequest)
			if err := dec(in); err != nil {
				return nil, err
			}
			return srv.(*sealer).sealBatch(in)
		},
	}},
}

func BenchmarkSealBatchEcho(b *testing.B) {
	conn := benchBaseline(b, &sealBatchDesc, newSealer(b))
	req := benchBatchRequest()
	runInFlight(b, func(ctx context.Context) error {
		return conn.Invoke(ctx, "/custos.bench.SealBatch/SealBatch", req, new(custosv1.EncryptBatchResponse))
	})
}
