package server

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// Requests checked by hand rather than by protovalidate: the batches, whose
// handlers check each item on its own (a bad item fails alone), and the
// single data-plane calls made most often, whose rules checkSingle applies
// in the request path (protovalidate, with its regular expression for the
// name, cost a twentieth of such a call's CPU). The rules are the protos';
// TestHandChecksAgreeWithProtovalidate holds them to it.
var handChecked = map[protoreflect.FullName]bool{}

func init() {
	for _, m := range []proto.Message{
		&custosv1.EncryptBatchRequest{},
		&custosv1.DecryptBatchRequest{},
		&custosv1.RewrapBatchRequest{},
		&custosv1.EncryptRequest{},
		&custosv1.DecryptRequest{},
		&custosv1.ComputeMacRequest{},
		&custosv1.VerifyMacRequest{},
		&custosv1.BlindIndexRequest{},
	} {
		handChecked[m.ProtoReflect().Descriptor().FullName()] = true
	}
}

// The protos' ceilings on the fields checked by hand.
const (
	maxMACData    = 1 << 20
	maxBlindIndex = 65536
	maxMACBytes   = 1024
)

// checkSingle applies the protos' field rules to the single calls that
// skip protovalidate; their names are checked when the request path parses
// them.
func checkSingle(req any) error {
	switch r := req.(type) {
	case *custosv1.EncryptRequest:
		return first(length("plaintext", r.GetPlaintext(), 1, maxPlaintextCeiling), length("associated_data", r.GetAssociatedData(), 0, maxAssociatedData))
	case *custosv1.DecryptRequest:
		return first(length("ciphertext", r.GetCiphertext(), 1, maxCiphertextBytes), length("associated_data", r.GetAssociatedData(), 0, maxAssociatedData))
	case *custosv1.ComputeMacRequest:
		return length("data", r.GetData(), 0, maxMACData)
	case *custosv1.VerifyMacRequest:
		return first(length("data", r.GetData(), 0, maxMACData), length("mac", r.GetMac(), 1, maxMACBytes))
	case *custosv1.BlindIndexRequest:
		return length("data", r.GetData(), 0, maxBlindIndex)
	}
	return nil
}

func length(field string, b []byte, minLen, maxLen int) error {
	switch {
	case len(b) < minLen && minLen == 1:
		return status.Errorf(codes.InvalidArgument, "%s: must not be empty", field)
	case len(b) < minLen:
		return status.Errorf(codes.InvalidArgument, "%s: %d bytes, at least %d required", field, len(b), minLen)
	case len(b) > maxLen:
		return status.Errorf(codes.InvalidArgument, "%s: %d bytes exceed %d", field, len(b), maxLen)
	}
	return nil
}

func first(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
