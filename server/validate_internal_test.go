package server

import (
	"bytes"
	"fmt"
	"testing"

	"buf.build/go/protovalidate"
	"google.golang.org/protobuf/proto"

	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// The single calls that skip protovalidate are checked by hand; for sizes
// around every bound of every field, the hand checks accept exactly what
// protovalidate accepts (names aside: the request path parses them).
func TestHandChecksAgreeWithProtovalidate(t *testing.T) {
	v, err := protovalidate.New()
	if err != nil {
		t.Fatal(err)
	}
	const name = "tenants/a/keys/k"
	sizes := func(bounds ...int) []int {
		var out []int
		for _, b := range bounds {
			for _, d := range []int{-1, 0, 1} {
				if b+d >= 0 {
					out = append(out, b+d)
				}
			}
		}
		return out
	}
	b := func(n int) []byte { return bytes.Repeat([]byte("x"), n) }
	var msgs []proto.Message
	for _, n := range sizes(0, maxPlaintextCeiling, maxAssociatedData, maxCiphertextBytes, maxMACData, maxBlindIndex, maxMACBytes) {
		msgs = append(msgs,
			&custosv1.EncryptRequest{Name: name, Plaintext: b(n), AssociatedData: b(1)},
			&custosv1.EncryptRequest{Name: name, Plaintext: b(1), AssociatedData: b(n)},
			&custosv1.DecryptRequest{Name: name, Ciphertext: b(n)},
			&custosv1.DecryptRequest{Name: name, Ciphertext: b(1), AssociatedData: b(n)},
			&custosv1.ComputeMacRequest{Name: name, Data: b(n)},
			&custosv1.VerifyMacRequest{Name: name, Data: b(n), Mac: b(1)},
			&custosv1.VerifyMacRequest{Name: name, Mac: b(n)},
			&custosv1.BlindIndexRequest{Name: name, Data: b(n)},
		)
	}
	for _, m := range msgs {
		want := v.Validate(m) == nil
		got := checkSingle(m) == nil
		if got != want {
			t.Errorf("%T with sizes %s: hand check accepts=%v, protovalidate accepts=%v", m, sizesOf(m), got, want)
		}
	}
}

func sizesOf(m proto.Message) string {
	var s string
	r := m.ProtoReflect()
	for i := range r.Descriptor().Fields().Len() {
		f := r.Descriptor().Fields().Get(i)
		if v := r.Get(f); f.Kind().String() == "bytes" {
			s += fmt.Sprintf("%s=%d ", f.Name(), len(v.Bytes()))
		}
	}
	return s
}
