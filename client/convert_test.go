package client

import (
	"reflect"
	"strings"
	"testing"
	"time"

	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

var (
	t0 = time.Date(2030, 1, 2, 3, 4, 5, 600, time.UTC)
	t1 = t0.Add(90 * 24 * time.Hour)
	t2 = t0.Add(time.Hour)
)

func TestTenantConvertsEveryFieldBothWays(t *testing.T) {
	pb := &custosv1.Tenant{
		Name:       "tenants/acme",
		State:      custosv1.TenantState_TENANT_STATE_DELETE_SCHEDULED,
		CreateTime: timestamppb.New(t0),
		DeleteTime: timestamppb.New(t1),
	}
	want := Tenant{Name: "tenants/acme", ID: "acme", State: TenantDeleteScheduled, CreateTime: t0, DeleteTime: t1}
	got := tenantFromProto(pb)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("tenantFromProto = %+v, want %+v", got, want)
	}
	if back := tenantToProto(got); !proto.Equal(back, pb) {
		t.Errorf("tenantToProto(tenantFromProto(pb)) = %v, want %v", back, pb)
	}
	checkAllFieldsSet(t, reflect.ValueOf(want), "Tenant")
	checkAllProtoFieldsSet(t, pb)
}

func TestKeyConvertsEveryFieldBothWays(t *testing.T) {
	pb := &custosv1.Key{
		Name:           "tenants/acme/keys/pii",
		Purpose:        custosv1.KeyPurpose_KEY_PURPOSE_ENCRYPT,
		PrimaryVersion: 2,
		Versions: []*custosv1.KeyVersion{
			{Version: 1, State: custosv1.KeyVersionState_KEY_VERSION_STATE_DESTROY_SCHEDULED, CreateTime: timestamppb.New(t0), DestroyTime: timestamppb.New(t1), EncryptCount: 1 << 40},
			{Version: 2, State: custosv1.KeyVersionState_KEY_VERSION_STATE_ENABLED, CreateTime: timestamppb.New(t2), EncryptCount: 3},
		},
		RotationPeriod:       durationpb.New(90 * 24 * time.Hour),
		NextRotationTime:     timestamppb.New(t1),
		MinDecryptionVersion: 1,
		CreateTime:           timestamppb.New(t0),
	}
	want := Key{
		Name:           "tenants/acme/keys/pii",
		Purpose:        PurposeEncrypt,
		PrimaryVersion: 2,
		Versions: []KeyVersion{
			{Version: 1, State: VersionDestroyScheduled, CreateTime: t0, DestroyTime: t1, EncryptCount: 1 << 40},
			{Version: 2, State: VersionEnabled, CreateTime: t2, EncryptCount: 3},
		},
		RotationPeriod:       90 * 24 * time.Hour,
		NextRotationTime:     t1,
		MinDecryptionVersion: 1,
		CreateTime:           t0,
	}
	got := keyFromProto(pb)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("keyFromProto =\n%+v\nwant\n%+v", got, want)
	}
	if back := keyToProto(got); !proto.Equal(back, pb) {
		t.Errorf("keyToProto(keyFromProto(pb)) =\n%v\nwant\n%v", back, pb)
	}
	checkAllFieldsSet(t, reflect.ValueOf(want), "Key")
	checkAllFieldsSet(t, reflect.ValueOf(want.Versions[0]), "KeyVersion")
	checkAllProtoFieldsSet(t, pb)
	checkAllProtoFieldsSet(t, pb.Versions[0])
}

func TestUnsetFieldsConvertToZeroValues(t *testing.T) {
	if got := tenantFromProto(nil); !reflect.DeepEqual(got, Tenant{}) {
		t.Errorf("tenantFromProto(nil) = %+v, want zero", got)
	}
	if got := keyFromProto(nil); !reflect.DeepEqual(got, Key{}) {
		t.Errorf("keyFromProto(nil) = %+v, want zero", got)
	}
	if got := keyFromProto(&custosv1.Key{}); got.Versions != nil || !got.CreateTime.IsZero() || got.RotationPeriod != 0 {
		t.Errorf("keyFromProto(empty) = %+v, want zero", got)
	}
	if got := keyToProto(Key{}); !proto.Equal(got, &custosv1.Key{}) {
		t.Errorf("keyToProto(zero) = %v, want an empty message (no zero timestamps)", got)
	}
	if got := tenantToProto(Tenant{}); !proto.Equal(got, &custosv1.Tenant{}) {
		t.Errorf("tenantToProto(zero) = %v, want an empty message", got)
	}
	if got := keyVersionToProto(KeyVersion{}); !proto.Equal(got, &custosv1.KeyVersion{}) {
		t.Errorf("keyVersionToProto(zero) = %v, want an empty message", got)
	}
}

func TestTimesConvertToUTCAndKeepTheInstant(t *testing.T) {
	local := time.Date(2030, 6, 1, 12, 0, 0, 7, time.FixedZone("X", 5*3600))
	got := timeFromProto(timeToProto(local))
	if !got.Equal(local) || got.Location() != time.UTC {
		t.Errorf("round trip of %v = %v, want the same instant in UTC", local, got)
	}
	if d := durationFromProto(durationToProto(-time.Second)); d != -time.Second {
		t.Errorf("round trip of -1s = %v", d)
	}
}

func TestKeySpecConvertsBothFields(t *testing.T) {
	got := keySpecToProto(KeySpec{Purpose: PurposeEncrypt, RotationPeriod: 30 * 24 * time.Hour})
	want := &custosv1.Key{Purpose: custosv1.KeyPurpose_KEY_PURPOSE_ENCRYPT, RotationPeriod: durationpb.New(30 * 24 * time.Hour)}
	if !proto.Equal(got, want) {
		t.Errorf("keySpecToProto = %v, want %v", got, want)
	}
	if got := keySpecToProto(KeySpec{Purpose: PurposeEncrypt}); got.RotationPeriod != nil {
		t.Errorf("a zero rotation period was sent as %v, want unset", got.RotationPeriod)
	}
	checkAllFieldsSet(t, reflect.ValueOf(KeySpec{Purpose: PurposeEncrypt, RotationPeriod: 1}), "KeySpec")
}

func TestBatchItemsAndResultsConvert(t *testing.T) {
	enc := encryptItemsToProto([]EncryptItem{{Plaintext: []byte("p"), AssociatedData: []byte("a")}})
	if len(enc) != 1 || string(enc[0].GetPlaintext()) != "p" || string(enc[0].GetAssociatedData()) != "a" {
		t.Errorf("encryptItemsToProto = %v", enc)
	}
	dec := decryptItemsToProto([]DecryptItem{{Ciphertext: []byte("c"), AssociatedData: []byte("a")}})
	if len(dec) != 1 || string(dec[0].GetCiphertext()) != "c" || string(dec[0].GetAssociatedData()) != "a" {
		t.Errorf("decryptItemsToProto = %v", dec)
	}

	er := encryptResultFromProto(&custosv1.EncryptBatchResponse_Result{Ciphertext: []byte("c"), KeyVersion: 3})
	if er.Err != nil || string(er.Ciphertext) != "c" || er.Version != 3 {
		t.Errorf("encrypt result without a status (OK) = %+v", er)
	}
	dr := decryptResultFromProto(&custosv1.DecryptBatchResponse_Result{Plaintext: []byte("p"), KeyVersion: 4})
	if dr.Err != nil || string(dr.Plaintext) != "p" || dr.Version != 4 {
		t.Errorf("decrypt result without a status (OK) = %+v", dr)
	}
}

// TestEnumsMatchTheAPI checks that every value of each custos.v1 enum has a
// Go constant whose String is the API name without its prefix. It fails when
// the protos gain a value this package does not know yet.
func TestEnumsMatchTheAPI(t *testing.T) {
	for n, name := range custosv1.KeyPurpose_name {
		if got, want := Purpose(n).String(), strings.TrimPrefix(name, "KEY_PURPOSE_"); got != want {
			t.Errorf("Purpose(%d).String() = %q, want %q", n, got, want)
		}
		if got := keyFromProto(&custosv1.Key{Purpose: custosv1.KeyPurpose(n)}).Purpose; got != Purpose(n) {
			t.Errorf("purpose %s converts to %v", name, got)
		}
	}
	for n, name := range custosv1.TenantState_name {
		if got, want := TenantState(n).String(), strings.TrimPrefix(name, "TENANT_STATE_"); got != want {
			t.Errorf("TenantState(%d).String() = %q, want %q", n, got, want)
		}
	}
	for n, name := range custosv1.KeyVersionState_name {
		if got, want := KeyVersionState(n).String(), strings.TrimPrefix(name, "KEY_VERSION_STATE_"); got != want {
			t.Errorf("KeyVersionState(%d).String() = %q, want %q", n, got, want)
		}
	}
	if got := Purpose(99).String(); got != "Purpose(99)" {
		t.Errorf("unknown purpose prints as %q", got)
	}
	if got := TenantState(99).String(); got != "TenantState(99)" {
		t.Errorf("unknown tenant state prints as %q", got)
	}
	if got := KeyVersionState(99).String(); got != "KeyVersionState(99)" {
		t.Errorf("unknown version state prints as %q", got)
	}
	// A value from a newer server survives the conversion.
	if got := keyToProto(keyFromProto(&custosv1.Key{Purpose: 7})).GetPurpose(); got != 7 {
		t.Errorf("unknown purpose 7 round-trips to %v", got)
	}
}

// checkAllFieldsSet fails if a field of the struct v is its zero value, so
// that the conversion tests above break when a field is added to a type but
// not to the test (and so, probably, not to the conversion).
func checkAllFieldsSet(t *testing.T, v reflect.Value, typ string) {
	t.Helper()
	for i := range v.NumField() {
		if v.Field(i).IsZero() {
			t.Errorf("test value of %s leaves field %s unset; set it so its conversion is tested", typ, v.Type().Field(i).Name)
		}
	}
}

// checkAllProtoFieldsSet is checkAllFieldsSet for a message, so the tests
// break when the protos gain a field.
func checkAllProtoFieldsSet(t *testing.T, m proto.Message) {
	t.Helper()
	r := m.ProtoReflect()
	fields := r.Descriptor().Fields()
	for i := range fields.Len() {
		if f := fields.Get(i); !r.Has(f) {
			t.Errorf("test message %s leaves field %s unset; set it so its conversion is tested", r.Descriptor().FullName(), f.Name())
		}
	}
}
