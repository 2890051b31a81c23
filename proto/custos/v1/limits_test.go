package custosv1_test

import (
	"testing"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

func rules(t *testing.T, m proto.Message, field protoreflect.Name) *validate.FieldRules {
	t.Helper()
	fd := m.ProtoReflect().Descriptor().Fields().ByName(field)
	if fd == nil {
		t.Fatalf("%s has no field %s", m.ProtoReflect().Descriptor().FullName(), field)
	}
	return proto.GetExtension(fd.Options(), validate.E_Field).(*validate.FieldRules)
}

// The constants are the protos' rules, which the server's hand-written
// batch checks and the configuration's ceilings rely on.
func TestLimitsAreTheProtos(t *testing.T) {
	for _, m := range []proto.Message{&custosv1.EncryptBatchRequest{}, &custosv1.DecryptBatchRequest{}, &custosv1.RewrapBatchRequest{}} {
		if got := rules(t, m, "items").GetRepeated().GetMaxItems(); got != custosv1.MaxBatchItems {
			t.Errorf("%T items max_items %d, MaxBatchItems %d", m, got, custosv1.MaxBatchItems)
		}
	}
	if got := rules(t, &custosv1.EncryptRequest{}, "plaintext").GetBytes().GetMaxLen(); got != custosv1.MaxPlaintextBytes {
		t.Errorf("EncryptRequest plaintext max_len %d, MaxPlaintextBytes %d", got, custosv1.MaxPlaintextBytes)
	}
}
