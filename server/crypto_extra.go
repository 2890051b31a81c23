package server

import (
	"context"

	"github.com/custos-kms/custos/internal/slab"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// Rewrap needs only the rewrap permission: the plaintext never leaves.
func (s cryptoService) Rewrap(ctx context.Context, req *custosv1.RewrapRequest) (*custosv1.RewrapResponse, error) {
	ref := callOf(ctx).key
	ct, v, err := s.ks.Rewrap(ctx, ref, req.GetCiphertext(), req.GetAssociatedData())
	if err != nil {
		return nil, s.toError(ctx, err)
	}
	return &custosv1.RewrapResponse{Ciphertext: ct, KeyVersion: v}, nil
}

// RewrapBatch rewraps each item on its own; one bad item never fails the others.
func (s cryptoService) RewrapBatch(ctx context.Context, req *custosv1.RewrapBatchRequest) (*custosv1.RewrapBatchResponse, error) {
	ref := callOf(ctx).key
	items := req.GetItems()
	if err := s.checkBatch(len(items)); err != nil {
		return nil, err
	}
	b, err := s.ks.Batch(ctx, ref, "rewrap")
	if err != nil {
		return nil, s.toError(ctx, err)
	}
	defer b.Done()
	statuses := newItemStatuses(ctx, s.Server)
	defer statuses.done()
	resp := &custosv1.RewrapBatchResponse{Results: slab.Of[custosv1.RewrapBatchResponse_Result](len(items))}
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
		ct, v, err := b.Rewrap(ctx, it.GetCiphertext(), it.GetAssociatedData())
		if err != nil {
			r.Status = statuses.of(err)
			continue
		}
		r.Ciphertext, r.KeyVersion = ct, v
	}
	return resp, nil
}

func (s cryptoService) GenerateDataKey(ctx context.Context, req *custosv1.GenerateDataKeyRequest) (*custosv1.GenerateDataKeyResponse, error) {
	ref := callOf(ctx).key
	pt, wrapped, v, err := s.ks.GenerateDataKey(ctx, ref, req.GetAssociatedData(), req.GetWrappedOnly())
	if err != nil {
		return nil, s.toError(ctx, err)
	}
	return &custosv1.GenerateDataKeyResponse{Plaintext: pt, Wrapped: wrapped, KeyVersion: v}, nil
}

func (s cryptoService) ComputeMac(ctx context.Context, req *custosv1.ComputeMacRequest) (*custosv1.ComputeMacResponse, error) {
	ref := callOf(ctx).key
	m, v, err := s.ks.ComputeMAC(ctx, ref, req.GetData())
	if err != nil {
		return nil, s.toError(ctx, err)
	}
	return &custosv1.ComputeMacResponse{Mac: m, KeyVersion: v}, nil
}

func (s cryptoService) VerifyMac(ctx context.Context, req *custosv1.VerifyMacRequest) (*custosv1.VerifyMacResponse, error) {
	ref := callOf(ctx).key
	ok, err := s.ks.VerifyMAC(ctx, ref, req.GetData(), req.GetMac())
	if err != nil {
		return nil, s.toError(ctx, err)
	}
	return &custosv1.VerifyMacResponse{Valid: ok}, nil
}

func (s cryptoService) BlindIndex(ctx context.Context, req *custosv1.BlindIndexRequest) (*custosv1.BlindIndexResponse, error) {
	ref := callOf(ctx).key
	entries, err := s.ks.BlindIndex(ctx, ref, req.GetData())
	if err != nil {
		return nil, s.toError(ctx, err)
	}
	resp := &custosv1.BlindIndexResponse{Entries: make([]*custosv1.BlindIndexResponse_Entry, len(entries))}
	for i, e := range entries {
		resp.Entries[i] = &custosv1.BlindIndexResponse_Entry{KeyVersion: e.Version, Mac: e.MAC}
	}
	return resp, nil
}

func (s cryptoService) HashPassword(ctx context.Context, req *custosv1.HashPasswordRequest) (*custosv1.HashPasswordResponse, error) {
	ref := callOf(ctx).key
	h, err := s.pw.Hash(ctx, ref, req.GetPassword())
	if err != nil {
		return nil, s.toError(ctx, err)
	}
	return &custosv1.HashPasswordResponse{Hash: h}, nil
}

func (s cryptoService) VerifyPassword(ctx context.Context, req *custosv1.VerifyPasswordRequest) (*custosv1.VerifyPasswordResponse, error) {
	ref := callOf(ctx).key
	match, rehash, err := s.pw.Verify(ctx, ref, req.GetPassword(), req.GetHash(), req.GetSubject())
	if err != nil {
		return nil, s.toError(ctx, err)
	}
	return &custosv1.VerifyPasswordResponse{Match: match, NeedsRehash: match && rehash}, nil
}
