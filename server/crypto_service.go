package server

import (
	"context"
	"errors"

	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/custos-kms/custos/envelope"
	"github.com/custos-kms/custos/internal/slab"
	"github.com/custos-kms/custos/keystore"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"github.com/custos-kms/custos/server/policy"
)

// cryptoService implements custosv1.CryptoServiceServer.
type cryptoService struct {
	*Server
	custosv1.UnsafeCryptoServiceServer
}

var _ custosv1.CryptoServiceServer = cryptoService{}

// okStatus is the per-item status of a successful batch item. Shared: it is
// only ever marshaled.
var okStatus = &statuspb.Status{Code: int32(codes.OK)}

func (s *Server) checkPlaintext(field string, n int) error {
	if n > s.limits.MaxPlaintextBytes {
		return status.Errorf(codes.InvalidArgument, "%s: %d bytes exceed the server limit of %d", field, n, s.limits.MaxPlaintextBytes)
	}
	return nil
}

// Batch requests skip protovalidate (evaluating its rules item by item cost
// about a tenth of a batch's CPU); the handlers check the same rules here,
// failing the whole call only for what concerns the call, and a bad item in
// that item's own status, so one bad item never fails the others.
const (
	maxBatchItemsCeiling = custosv1.MaxBatchItems     // the protos' max_items
	maxPlaintextCeiling  = custosv1.MaxPlaintextBytes // the protos' plaintext max_len
	maxCiphertextBytes   = 1114112                    // the protos' ciphertext max_len
	maxAssociatedData    = envelope.MaxAssociatedData // the protos' associated_data max_len
)

func (s *Server) checkBatch(n int) error {
	switch {
	case n == 0:
		return status.Error(codes.InvalidArgument, "items: at least one item is required")
	case n > s.limits.MaxBatchItems:
		return status.Errorf(codes.InvalidArgument, "items: %d items exceed the server limit of %d", n, s.limits.MaxBatchItems)
	}
	return nil
}

// checkEncryptItem applies EncryptBatchRequest.Item's rules.
func (s *Server) checkEncryptItem(pt, aad []byte) error {
	if len(pt) == 0 {
		return status.Error(codes.InvalidArgument, "items.plaintext: must not be empty")
	}
	if err := s.checkPlaintext("items.plaintext", len(pt)); err != nil {
		return err
	}
	return checkItemAAD(aad)
}

// checkCiphertextItem applies the Decrypt/Rewrap batch item rules.
func checkCiphertextItem(ct, aad []byte) error {
	if len(ct) == 0 {
		return status.Error(codes.InvalidArgument, "items.ciphertext: must not be empty")
	}
	if len(ct) > maxCiphertextBytes {
		return status.Errorf(codes.InvalidArgument, "items.ciphertext: %d bytes exceed %d", len(ct), maxCiphertextBytes)
	}
	return checkItemAAD(aad)
}

func checkItemAAD(aad []byte) error {
	if len(aad) > maxAssociatedData {
		return status.Errorf(codes.InvalidArgument, "items.associated_data: %d bytes exceed %d", len(aad), maxAssociatedData)
	}
	return nil
}

func (s cryptoService) Encrypt(ctx context.Context, req *custosv1.EncryptRequest) (*custosv1.EncryptResponse, error) {
	ref := callOf(ctx).key
	if err := s.checkPlaintext("plaintext", len(req.GetPlaintext())); err != nil {
		return nil, err
	}
	ct, v, err := s.ks.Encrypt(ctx, ref, req.GetPlaintext(), req.GetAssociatedData())
	if err != nil {
		return nil, s.toError(ctx, err)
	}
	return &custosv1.EncryptResponse{Ciphertext: ct, KeyVersion: v}, nil
}

// Decrypt decrypts a field (needs decrypt) or unwraps a data key from
// GenerateDataKey (needs datakey). A caller holding both gets whichever the
// ciphertext is, and the answer's data_key says which; a caller holding one
// cannot use the other kind.
func (s cryptoService) Decrypt(ctx context.Context, req *custosv1.DecryptRequest) (*custosv1.DecryptResponse, error) {
	c := callOf(ctx)
	ref, fields, dataKeys := c.key, c.has(policy.Decrypt), c.has(policy.DataKey)
	ct, aad := req.GetCiphertext(), req.GetAssociatedData()
	var pt []byte
	var v uint32
	err := keystore.ErrInvalidCiphertext
	if fields {
		pt, v, err = s.ks.Decrypt(ctx, ref, ct, aad)
	}
	dataKey := false
	if dataKeys && errors.Is(err, keystore.ErrInvalidCiphertext) {
		fieldErr := err
		pt, v, err = s.ks.DecryptDataKey(ctx, ref, ct, aad)
		dataKey = err == nil
		if fields && errors.Is(err, keystore.ErrWrongPurpose) {
			// Not an ENCRYPT key, so not a data key, but a key this
			// caller may decrypt fields with: the field's error stands.
			// A datakey-only caller gets WRONG_PURPOSE, as from
			// GenerateDataKey.
			err = fieldErr
		}
	}
	if err != nil {
		return nil, s.toError(ctx, err)
	}
	return &custosv1.DecryptResponse{Plaintext: pt, KeyVersion: v, DataKey: dataKey}, nil
}

// EncryptBatch fails as a whole only for what concerns the call (name,
// permission, item count) or the key (unknown, tenant deleted, wrong
// purpose, unavailable); each item gets its own status.
func (s cryptoService) EncryptBatch(ctx context.Context, req *custosv1.EncryptBatchRequest) (*custosv1.EncryptBatchResponse, error) {
	ref := callOf(ctx).key
	items := req.GetItems()
	if err := s.checkBatch(len(items)); err != nil {
		return nil, err
	}
	b, err := s.ks.Batch(ctx, ref, "encrypt")
	if err != nil {
		return nil, s.toError(ctx, err)
	}
	defer b.Done()
	statuses := newItemStatuses(ctx, s.Server)
	defer statuses.done()
	resp := &custosv1.EncryptBatchResponse{Results: slab.Of[custosv1.EncryptBatchResponse_Result](len(items))}
	for i, it := range items {
		if err := callEnded(ctx, i); err != nil {
			return nil, err
		}
		r := resp.Results[i]
		r.Status = okStatus
		if err := s.checkEncryptItem(it.GetPlaintext(), it.GetAssociatedData()); err != nil {
			r.Status = statuses.of(err)
			continue
		}
		ct, v, err := b.Encrypt(it.GetPlaintext(), it.GetAssociatedData())
		if err != nil {
			r.Status = statuses.of(err)
			continue
		}
		r.Ciphertext, r.KeyVersion = ct, v
	}
	return resp, nil
}

// DecryptBatch decrypts each item on its own; one bad item never fails the others.
func (s cryptoService) DecryptBatch(ctx context.Context, req *custosv1.DecryptBatchRequest) (*custosv1.DecryptBatchResponse, error) {
	ref := callOf(ctx).key
	items := req.GetItems()
	if err := s.checkBatch(len(items)); err != nil {
		return nil, err
	}
	b, err := s.ks.Batch(ctx, ref, "decrypt")
	if err != nil {
		return nil, s.toError(ctx, err)
	}
	defer b.Done()
	statuses := newItemStatuses(ctx, s.Server)
	defer statuses.done()
	resp := &custosv1.DecryptBatchResponse{Results: slab.Of[custosv1.DecryptBatchResponse_Result](len(items))}
	for i, it := range items {
		if err := callEnded(ctx, i); err != nil {
			return nil, err
		}
		r := resp.Results[i]
		r.Status = okStatus
		if err := checkCiphertextItem(it.GetCiphertext(), it.GetAssociatedData()); err != nil {
			r.Status = statuses.of(err)
			continue
		}
		pt, v, err := b.Decrypt(ctx, it.GetCiphertext(), it.GetAssociatedData())
		if err != nil {
			r.Status = statuses.of(err)
			continue
		}
		r.Plaintext, r.KeyVersion = pt, v
	}
	return resp, nil
}

// callEndedEvery is how many items a batch handles between looks at its
// call's context.
const callEndedEvery = 64

// callEnded is the status of a batch's call whose caller went away or ran
// out of time, looked at every callEndedEvery items from item 0: a batch
// of 10,000 items does not run on for a caller that has its answer.
func callEnded(ctx context.Context, i int) error {
	if i%callEndedEvery != 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return status.FromContextError(err).Err()
	}
	return nil
}
