package client

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
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
		Name:           "tenants/acme/keys/logins",
		Purpose:        custosv1.KeyPurpose_KEY_PURPOSE_PASSWORD,
		PrimaryVersion: 2,
		Versions: []*custosv1.KeyVersion{
			{Version: 1, State: custosv1.KeyVersionState_KEY_VERSION_STATE_DESTROY_SCHEDULED, CreateTime: timestamppb.New(t0), DestroyTime: timestamppb.New(t1), EncryptCount: 1 << 40},
			{Version: 2, State: custosv1.KeyVersionState_KEY_VERSION_STATE_ENABLED, CreateTime: timestamppb.New(t2), EncryptCount: 3},
		},
		RotationPeriod:       durationpb.New(90 * 24 * time.Hour),
		NextRotationTime:     timestamppb.New(t1),
		MinDecryptionVersion: 1,
		CreateTime:           timestamppb.New(t0),
		PasswordPolicy:       fullPolicyProto(),
	}
	want := Key{
		Name:           "tenants/acme/keys/logins",
		Purpose:        PurposePassword,
		PrimaryVersion: 2,
		Versions: []KeyVersion{
			{Version: 1, State: VersionDestroyScheduled, CreateTime: t0, DestroyTime: t1, EncryptCount: 1 << 40},
			{Version: 2, State: VersionEnabled, CreateTime: t2, EncryptCount: 3},
		},
		RotationPeriod:       90 * 24 * time.Hour,
		NextRotationTime:     t1,
		MinDecryptionVersion: 1,
		CreateTime:           t0,
		PasswordPolicy:       fullPolicy(),
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

// fullPolicy and fullPolicyProto are the same password policy with every
// field set (argon2id fields next to a bcrypt cost, which no server would
// store, so that each field's conversion is tested).
func fullPolicy() *PasswordPolicy {
	return &PasswordPolicy{
		Algorithm:          PasswordArgon2id,
		BcryptCost:         13,
		Argon2MemoryKiB:    65536,
		Argon2Iterations:   3,
		Argon2Parallelism:  4,
		LockoutMaxFailures: 5,
		LockoutWindow:      10 * time.Minute,
		LockoutDuration:    time.Hour,
	}
}

func fullPolicyProto() *custosv1.PasswordPolicy {
	return &custosv1.PasswordPolicy{
		Algorithm:          custosv1.PasswordAlgorithm_PASSWORD_ALGORITHM_ARGON2ID,
		BcryptCost:         13,
		Argon2MemoryKib:    65536,
		Argon2Iterations:   3,
		Argon2Parallelism:  4,
		LockoutMaxFailures: 5,
		LockoutWindow:      durationpb.New(10 * time.Minute),
		LockoutDuration:    durationpb.New(time.Hour),
	}
}

func TestPasswordPolicyConvertsEveryFieldBothWays(t *testing.T) {
	pb, want := fullPolicyProto(), fullPolicy()
	got := passwordPolicyFromProto(pb)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("passwordPolicyFromProto = %+v, want %+v", got, want)
	}
	if back := passwordPolicyToProto(got); !proto.Equal(back, pb) {
		t.Errorf("passwordPolicyToProto(passwordPolicyFromProto(pb)) = %v, want %v", back, pb)
	}
	checkAllFieldsSet(t, reflect.ValueOf(*want), "PasswordPolicy")
	checkAllProtoFieldsSet(t, pb)

	if got := passwordPolicyFromProto(nil); got != nil {
		t.Errorf("passwordPolicyFromProto(nil) = %+v, want nil", got)
	}
	if got := passwordPolicyToProto(nil); got != nil {
		t.Errorf("passwordPolicyToProto(nil) = %v, want nil (unset)", got)
	}
	if got := passwordPolicyToProto(&PasswordPolicy{}); !proto.Equal(got, &custosv1.PasswordPolicy{}) {
		t.Errorf("passwordPolicyToProto(zero) = %v, want an empty message (server defaults)", got)
	}
}

func TestABcryptCostBeyondInt32IsNotWrappedToAValidOne(t *testing.T) {
	if strconv.IntSize < 64 {
		t.Skip("int is 32 bits: no cost beyond int32")
	}
	for _, cost := range []int{1<<32 + 12, -(1<<32 - 12)} {
		if got := passwordPolicyToProto(&PasswordPolicy{BcryptCost: cost}).GetBcryptCost(); got != -1 {
			t.Errorf("cost %d is sent as %d, want -1 (refused by the server)", cost, got)
		}
	}
}

func TestKeyUpdateSendsOnlyTheFieldsItSets(t *testing.T) {
	day, zeroPeriod := 24*time.Hour, time.Duration(0)
	three, zeroVersion := uint32(3), uint32(0)
	tests := []struct {
		name      string
		update    KeyUpdate
		wantKey   *custosv1.Key
		wantPaths []string
	}{
		{"nothing set sends an empty mask", KeyUpdate{}, &custosv1.Key{Name: "k"}, nil},
		{"a rotation period", KeyUpdate{RotationPeriod: &day},
			&custosv1.Key{Name: "k", RotationPeriod: durationpb.New(day)}, []string{"rotation_period"}},
		{"a zero rotation period is sent unset, which turns rotation off", KeyUpdate{RotationPeriod: &zeroPeriod},
			&custosv1.Key{Name: "k"}, []string{"rotation_period"}},
		{"a minimum decryption version", KeyUpdate{MinDecryptionVersion: &three},
			&custosv1.Key{Name: "k", MinDecryptionVersion: 3}, []string{"min_decryption_version"}},
		{"a zero minimum decryption version removes the minimum", KeyUpdate{MinDecryptionVersion: &zeroVersion},
			&custosv1.Key{Name: "k"}, []string{"min_decryption_version"}},
		{"a zero password policy asks for the defaults", KeyUpdate{PasswordPolicy: &PasswordPolicy{}},
			&custosv1.Key{Name: "k", PasswordPolicy: &custosv1.PasswordPolicy{}}, []string{"password_policy"}},
		{"every field", KeyUpdate{RotationPeriod: &day, MinDecryptionVersion: &three, PasswordPolicy: fullPolicy()},
			&custosv1.Key{Name: "k", RotationPeriod: durationpb.New(day), MinDecryptionVersion: 3, PasswordPolicy: fullPolicyProto()},
			[]string{"rotation_period", "min_decryption_version", "password_policy"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, mask := keyUpdateToProto("k", tt.update)
			if !proto.Equal(key, tt.wantKey) {
				t.Errorf("key = %v, want %v", key, tt.wantKey)
			}
			if !slices.Equal(mask.GetPaths(), tt.wantPaths) {
				t.Errorf("mask paths = %q, want %q", mask.GetPaths(), tt.wantPaths)
			}
			if mask == nil {
				t.Error("mask is nil; send an empty one so the server names what is missing")
			}
		})
	}
	// Every path the test sends must be a field of custos.v1.Key.
	fields := (&custosv1.Key{}).ProtoReflect().Descriptor().Fields()
	for _, p := range tests[len(tests)-1].wantPaths {
		if fields.ByName(protoreflect.Name(p)) == nil {
			t.Errorf("mask path %q is not a field of custos.v1.Key", p)
		}
	}
	checkAllFieldsSet(t, reflect.ValueOf(tests[len(tests)-1].update), "KeyUpdate")
}

func TestUnsetFieldsConvertToZeroValues(t *testing.T) {
	if got := tenantFromProto(nil); !reflect.DeepEqual(got, Tenant{}) {
		t.Errorf("tenantFromProto(nil) = %+v, want zero", got)
	}
	if got := keyFromProto(nil); !reflect.DeepEqual(got, Key{}) {
		t.Errorf("keyFromProto(nil) = %+v, want zero", got)
	}
	if got := keyFromProto(&custosv1.Key{}); got.Versions != nil || !got.CreateTime.IsZero() || got.RotationPeriod != 0 || got.PasswordPolicy != nil {
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

func TestKeySpecConvertsEveryField(t *testing.T) {
	spec := KeySpec{Purpose: PurposePassword, RotationPeriod: 30 * 24 * time.Hour, PasswordPolicy: fullPolicy()}
	got := keySpecToProto(spec)
	want := &custosv1.Key{
		Purpose:        custosv1.KeyPurpose_KEY_PURPOSE_PASSWORD,
		RotationPeriod: durationpb.New(30 * 24 * time.Hour),
		PasswordPolicy: fullPolicyProto(),
	}
	if !proto.Equal(got, want) {
		t.Errorf("keySpecToProto = %v, want %v", got, want)
	}
	if got := keySpecToProto(KeySpec{Purpose: PurposeEncrypt}); got.RotationPeriod != nil || got.PasswordPolicy != nil {
		t.Errorf("a zero rotation period and nil policy were sent as %v, %v; want unset", got.RotationPeriod, got.PasswordPolicy)
	}
	checkAllFieldsSet(t, reflect.ValueOf(spec), "KeySpec")
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

	rw := rewrapItemsToProto([]RewrapItem{{Ciphertext: []byte("c"), AssociatedData: []byte("a")}})
	if len(rw) != 1 || string(rw[0].GetCiphertext()) != "c" || string(rw[0].GetAssociatedData()) != "a" {
		t.Errorf("rewrapItemsToProto = %v", rw)
	}
	checkAllFieldsSet(t, reflect.ValueOf(RewrapItem{Ciphertext: []byte("c"), AssociatedData: []byte("a")}), "RewrapItem")
	rr := rewrapResultFromProto(&custosv1.RewrapBatchResponse_Result{Ciphertext: []byte("c"), KeyVersion: 5})
	if rr.Err != nil || string(rr.Ciphertext) != "c" || rr.Version != 5 {
		t.Errorf("rewrap result without a status (OK) = %+v", rr)
	}
	failed := rewrapResultFromProto(&custosv1.RewrapBatchResponse_Result{
		Ciphertext: []byte("ignored"), KeyVersion: 5,
		Status: status.New(codes.FailedPrecondition, "disabled").Proto(),
	})
	if !errors.Is(failed.Err, ErrFailedPrecondition) || failed.Ciphertext != nil || failed.Version != 0 {
		t.Errorf("failed rewrap result = %+v, want only Err", failed)
	}
}

func TestBlindIndexEntriesKeepTheServersOrder(t *testing.T) {
	got := blindIndexFromProto([]*custosv1.BlindIndexResponse_Entry{
		{KeyVersion: 3, Mac: []byte("m3")},
		{KeyVersion: 1, Mac: []byte("m1")},
	})
	want := []BlindIndexEntry{{Version: 3, MAC: []byte("m3")}, {Version: 1, MAC: []byte("m1")}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("blindIndexFromProto = %+v, want %+v", got, want)
	}
	checkAllFieldsSet(t, reflect.ValueOf(want[0]), "BlindIndexEntry")
	checkAllProtoFieldsSet(t, &custosv1.BlindIndexResponse_Entry{KeyVersion: 3, Mac: []byte("m3")})
	if got := blindIndexFromProto(nil); got != nil {
		t.Errorf("blindIndexFromProto(nil) = %v, want nil", got)
	}
}

func TestDataKeyNeverPrintsItsPlaintext(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	k := DataKey{Plaintext: secret, Wrapped: []byte("wrapped-bytes"), Version: 7}
	leaks := func(out string) bool {
		return strings.Contains(out, string(secret)) || strings.Contains(out, fmt.Sprintf("%x", secret)) ||
			strings.Contains(out, "48 49 50") || strings.Contains(out, "[48 49") || strings.Contains(out, "110000 110001") ||
			strings.Contains(out, "60 61 62") || strings.Contains(out, base64.StdEncoding.EncodeToString(secret))
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%q", "%d", "%b", "%o"} {
		if out := fmt.Sprintf(verb, k); leaks(out) || !strings.Contains(out, "REDACTED") {
			t.Errorf("Sprintf(%q, DataKey) = %q: it shows the plaintext", verb, out)
		}
	}
	// Loggers that write JSON: slog's handler, and those that use
	// json.Marshal (zap's Any, zerolog's Interface).
	var logs strings.Builder
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("fetched", "dk", k, "ptr", &k)
	slog.New(slog.NewTextHandler(&logs, nil)).Info("fetched", "dk", k)
	js, err := json.Marshal(map[string]any{"dk": k, "ptr": &k})
	if err != nil {
		t.Fatal(err)
	}
	for _, out := range []string{logs.String(), string(js)} {
		if leaks(out) || !strings.Contains(out, "REDACTED") {
			t.Errorf("logged as %s: it shows the plaintext", out)
		}
	}
	// What JSON keeps reads back: Wrapped and Version, no plaintext.
	b, err := json.Marshal(k)
	if err != nil {
		t.Fatal(err)
	}
	var back DataKey
	if err := json.Unmarshal(b, &back); err != nil || string(back.Wrapped) != "wrapped-bytes" || back.Version != 7 || back.Plaintext != nil {
		t.Errorf("JSON round trip: %+v, %v; want Wrapped and Version, no plaintext", back, err)
	}
	if got, want := k.String(), "DataKey{Plaintext: [REDACTED 32 bytes], Wrapped: 13 bytes, Version: 7}"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
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
	for n, name := range custosv1.PasswordAlgorithm_name {
		if got, want := PasswordAlgorithm(n).String(), strings.TrimPrefix(name, "PASSWORD_ALGORITHM_"); got != want {
			t.Errorf("PasswordAlgorithm(%d).String() = %q, want %q", n, got, want)
		}
		pb := &custosv1.PasswordPolicy{Algorithm: custosv1.PasswordAlgorithm(n)}
		if got := passwordPolicyFromProto(pb).Algorithm; got != PasswordAlgorithm(n) {
			t.Errorf("algorithm %s converts to %v", name, got)
		}
	}
	if got := PasswordAlgorithm(99).String(); got != "PasswordAlgorithm(99)" {
		t.Errorf("unknown password algorithm prints as %q", got)
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

// A server whose page tokens go round in a cycle (A, B, A, …) ends the
// iteration with an error instead of listing forever.
func TestAllPagesStopsOnACycleOfPageTokens(t *testing.T) {
	next := map[string]string{"": "A", "A": "B", "B": "A"}
	calls := 0
	list := func(_ context.Context, o ListOptions) ([]int, string, error) {
		calls++
		if calls > 10 {
			t.Fatal("still listing after 10 pages")
		}
		return []int{calls}, next[o.PageToken], nil
	}
	var err error
	for _, e := range allPages(context.Background(), "list", list) {
		if e != nil {
			err = e
		}
	}
	if err == nil || status.Code(err) != codes.Internal {
		t.Fatalf("a cycle of page tokens: %v, want an INTERNAL error", err)
	}
}

// A call the closed transport ends as UNAVAILABLE is CANCELLED with
// ErrClosed once the client is closed: never "retry".
func TestACallEndedByCloseIsCancelledNotUnavailable(t *testing.T) {
	c := &Client{}
	c.closed.Store(true)
	err := c.callError(context.Background(), "op", status.Error(codes.Unavailable, "transport is closing"))
	if status.Code(err) != codes.Canceled || !errors.Is(err, ErrClosed) || errors.Is(err, ErrUnavailable) {
		t.Fatalf("%v (code %v), want CANCELLED with ErrClosed, not ErrUnavailable", err, status.Code(err))
	}
	// An answer the server gave (here a refusal) keeps its code.
	err = c.callError(context.Background(), "op", status.Error(codes.PermissionDenied, "no"))
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a refusal after Close: code %v, want PERMISSION_DENIED", status.Code(err))
	}
}

// A shared data-key fetch that runs out of its own time is UNAVAILABLE to
// its callers, not DEADLINE_EXCEEDED: their own deadlines may be far off.
func TestAFetchOutOfItsOwnTimeIsUnavailable(t *testing.T) {
	expired, cancel := context.WithTimeout(context.Background(), 0)
	defer cancel()
	<-expired.Done()
	remote := status.Error(codes.DeadlineExceeded, "context deadline exceeded")
	err := fetchError(expired, "op", remote)
	if status.Code(err) != codes.Unavailable || !errors.Is(err, ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("%v (code %v), want UNAVAILABLE and not context.DeadlineExceeded", err, status.Code(err))
	}
	if got := fetchError(context.Background(), "op", remote); got != remote {
		t.Fatalf("a fetch with time left: %v, want the call's own error", got)
	}
}
