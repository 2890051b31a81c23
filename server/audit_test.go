package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/internal/pki"
	"github.com/custos-kms/custos/keystore/audit"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"github.com/custos-kms/custos/server"
)

const idAuditorA = "spiffe://custos.test/auditor-a" // audit.read on tenant a only

const auditPolicy = testPolicy + `
  - identities: ["spiffe://custos.test/auditor-a"]
    tenants: ["a"]
    permissions: [audit.read]
`

// events flushes the log and returns every event in it.
func events(t *testing.T, ts *testServer) []audit.Record {
	t.Helper()
	ctx := testContext(t)
	l := ts.rt.AuditLog()
	if err := ts.rt.FlushAudit(ctx); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	var all []audit.Record
	for from := uint64(0); ; {
		recs, err := l.Leaves(ctx, from, 1000)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, recs...)
		if len(recs) < 1000 {
			return all
		}
		from = recs[len(recs)-1].Index + 1
	}
}

// requestID is the x-request-id a call's header (or, for a trailers-only
// error response, its trailer) carried.
func requestID(header, trailer metadata.MD) string {
	for _, md := range []metadata.MD{header, trailer} {
		if v := md.Get(server.RequestIDHeader); len(v) == 1 {
			return v[0]
		}
	}
	return ""
}

type sentCall struct {
	method, identity, tenant, rid string
	code                          codes.Code
}

// request is an instance of method's request type, with its tenant and
// key names set to tenant a's key k (or to garbage when bad).
func request(t *testing.T, method string, bad bool) (req, resp protoreflect.ProtoMessage) {
	t.Helper()
	svc, m, _ := strings.Cut(strings.TrimPrefix(method, "/"), "/")
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svc))
	if err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	md := d.(protoreflect.ServiceDescriptor).Methods().ByName(protoreflect.Name(m))
	mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
	if err != nil {
		t.Fatal(err)
	}
	rt, err := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
	if err != nil {
		t.Fatal(err)
	}
	msg := mt.New()
	set := func(m protoreflect.Message, field, v string) {
		if f := m.Descriptor().Fields().ByName(protoreflect.Name(field)); f != nil && f.Kind() == protoreflect.StringKind {
			if bad {
				v = "Not A/Name"
			}
			m.Set(f, protoreflect.ValueOfString(v))
		}
	}
	set(msg, "name", "tenants/a/keys/k")
	set(msg, "parent", "tenants/a")
	set(msg, "tenant_id", "a")
	set(msg, "key_id", "k")
	if strings.HasSuffix(method, "/GetTenant") || strings.HasSuffix(method, "/DeleteTenant") || strings.HasSuffix(method, "/UndeleteTenant") {
		set(msg, "name", "tenants/a")
	}
	if f := msg.Descriptor().Fields().ByName("key"); f != nil && f.Kind() == protoreflect.MessageKind {
		set(msg.Mutable(f).Message(), "name", "tenants/a/keys/k")
	}
	return msg.Interface(), rt.New().Interface()
}

func TestEveryMethodRecordsExactlyOneEventPerCall(t *testing.T) {
	ts := start(t, newFiles(t), options{})
	setup(t, ts, "a")
	ctx := testContext(t)
	var sent []sentCall
	for method, op := range server.MethodOps() {
		if strings.HasPrefix(method, "/custos.test.") {
			continue // the test-only Panicker is not registered here
		}
		for _, v := range []struct {
			id  string
			bad bool
		}{{idAdmin, false}, {idNobody, false}, {idAdmin, true}} {
			conn := ts.conn(t, v.id)
			var header, trailer metadata.MD
			var err error
			switch method {
			case healthpb.Health_Watch_FullMethodName:
				sctx, cancel := context.WithCancel(ctx)
				st, serr := healthpb.NewHealthClient(conn).Watch(sctx, &healthpb.HealthCheckRequest{})
				if serr == nil {
					_, _ = st.Recv()
					header, _ = st.Header()
				}
				cancel()
				err = status.Error(codes.Canceled, "")
			case "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo":
				desc := &grpc.StreamDesc{StreamName: "ServerReflectionInfo", ServerStreams: true, ClientStreams: true}
				st, serr := conn.NewStream(ctx, desc, method)
				if serr != nil {
					t.Fatal(serr)
				}
				_ = st.SendMsg(&reflectionv1.ServerReflectionRequest{MessageRequest: &reflectionv1.ServerReflectionRequest_ListServices{}})
				_ = st.CloseSend()
				for {
					if rerr := st.RecvMsg(new(reflectionv1.ServerReflectionResponse)); rerr != nil {
						if !errors.Is(rerr, io.EOF) {
							t.Fatalf("%s: %v", method, rerr)
						}
						break
					}
				}
				header, _ = st.Header()
				trailer = st.Trailer()
				err = nil
			default:
				req, resp := request(t, method, v.bad)
				err = conn.Invoke(ctx, method, req, resp, grpc.Header(&header), grpc.Trailer(&trailer))
			}
			rid := requestID(header, trailer)
			if rid == "" {
				t.Fatalf("%s as %s: no %s in the response", method, v.id, server.RequestIDHeader)
			}
			tenant := "a"
			if v.bad || op == "list_tenants" || strings.HasPrefix(op, "health") || op == "reflection" {
				tenant = ""
			}
			sent = append(sent, sentCall{method: method, identity: v.id, tenant: tenant, rid: rid, code: status.Code(err)})
			if method == healthpb.Health_Watch_FullMethodName {
				sent[len(sent)-1].code = codes.Canceled
			}
		}
	}
	// Stream events are written when the server sees the stream end.
	var byID map[string][]*custosv1.AuditEvent
	waitFor(t, 10*time.Second, "every call's event is in the log", func() bool {
		byID = map[string][]*custosv1.AuditEvent{}
		for _, r := range events(t, ts) {
			byID[r.Event.GetRequestId()] = append(byID[r.Event.GetRequestId()], r.Event)
		}
		for _, c := range sent {
			if len(byID[c.rid]) == 0 {
				return false
			}
		}
		return true
	})
	ops := server.MethodOps()
	for _, c := range sent {
		evs := byID[c.rid]
		if len(evs) != 1 {
			t.Errorf("%s as %s: %d events, want exactly 1", c.method, c.identity, len(evs))
			continue
		}
		ev := evs[0]
		if ev.GetMethod() != c.method || ev.GetOperation() != ops[c.method] || ev.GetIdentity() != c.identity {
			t.Errorf("%s as %s: event says method %s operation %s identity %s", c.method, c.identity, ev.GetMethod(), ev.GetOperation(), ev.GetIdentity())
		}
		if c.method != healthpb.Health_Watch_FullMethodName && ev.GetCode() != audit.CodeName(c.code) {
			t.Errorf("%s as %s: event code %s, the caller saw %s", c.method, c.identity, ev.GetCode(), audit.CodeName(c.code))
		}
		if c.tenant != "" && c.code != codes.InvalidArgument && ev.GetTenant() != c.tenant {
			t.Errorf("%s as %s (%s): event tenant %q, want %q", c.method, c.identity, c.code, ev.GetTenant(), c.tenant)
		}
		if c.method == custosv1.KeyService_CreateKey_FullMethodName && c.code != codes.InvalidArgument && ev.GetKey() != "k" {
			t.Errorf("CreateKey as %s: event key %q, want the key_id k", c.identity, ev.GetKey())
		}
		if ev.GetPeer() == "" || ev.GetTime() == nil || ev.GetDuration() == nil {
			t.Errorf("%s: event lacks peer, time or duration: %v", c.method, ev)
		}
	}
	// Denied calls are among them: a caller without a rule gets nothing
	// but refusals (invalid requests are refused before authorization).
	denied := 0
	for _, c := range sent {
		public := strings.HasPrefix(ops[c.method], "health") || ops[c.method] == "reflection"
		switch {
		case c.identity != idNobody || public:
		case c.code == codes.PermissionDenied:
			denied++
		case c.code != codes.InvalidArgument:
			t.Errorf("%s as %s: %s, want PERMISSION_DENIED or INVALID_ARGUMENT", c.method, c.identity, c.code)
		}
	}
	if denied == 0 {
		t.Error("no call was denied")
	}
}

func TestEventsAndExportHoldNoPayloads(t *testing.T) {
	export := filepath.Join(t.TempDir(), "audit.jsonl")
	ts := start(t, newFiles(t), options{configure: func(c *config.Config) { c.Audit.Export.Path = export }})
	ctx := testContext(t)
	c := ts.clients(t, idAdmin)
	setup(t, ts, "a")
	for _, purpose := range []custosv1.KeyPurpose{custosv1.KeyPurpose_KEY_PURPOSE_MAC, custosv1.KeyPurpose_KEY_PURPOSE_PASSWORD} {
		id := strings.ToLower(strings.TrimPrefix(purpose.String(), "KEY_PURPOSE_"))
		id = strings.ReplaceAll(id, "_", "-")
		if _, err := c.keys.CreateKey(ctx, &custosv1.CreateKeyRequest{Parent: "tenants/a", KeyId: id, Key: &custosv1.Key{Purpose: purpose}}); err != nil {
			t.Fatal(err)
		}
	}
	markers := []string{"MARKER-PLAINTEXT-7f3a", "MARKER-AAD-91bc", "MARKER-PASSWORD-55de", "MARKER-MACDATA-0a1b", "MARKER-SUBJECT-c0ff"}
	var secrets [][]byte
	for _, m := range markers {
		secrets = append(secrets, []byte(m))
	}
	enc, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("a"), Plaintext: []byte(markers[0]), AssociatedData: []byte(markers[1])})
	if err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, enc.GetCiphertext())
	if _, err := c.crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: keyName("a"), Ciphertext: enc.GetCiphertext(), AssociatedData: []byte(markers[1])}); err != nil {
		t.Fatal(err)
	}
	_, _ = c.crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: keyName("a"), Ciphertext: enc.GetCiphertext(), AssociatedData: []byte(markers[0])}) // refused: not authentic
	if _, err := c.crypto.EncryptBatch(ctx, &custosv1.EncryptBatchRequest{Name: keyName("a"), Items: []*custosv1.EncryptBatchRequest_Item{{Plaintext: []byte(markers[0]), AssociatedData: []byte(markers[1])}}}); err != nil {
		t.Fatal(err)
	}
	mac, err := c.crypto.ComputeMac(ctx, &custosv1.ComputeMacRequest{Name: "tenants/a/keys/mac", Data: []byte(markers[3])})
	if err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, mac.GetMac())
	if _, err := c.crypto.VerifyMac(ctx, &custosv1.VerifyMacRequest{Name: "tenants/a/keys/mac", Data: []byte(markers[3]), Mac: mac.GetMac()}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.crypto.BlindIndex(ctx, &custosv1.BlindIndexRequest{Name: "tenants/a/keys/mac", Data: []byte(markers[3])}); err != nil {
		t.Fatal(err)
	}
	h, err := c.crypto.HashPassword(ctx, &custosv1.HashPasswordRequest{Name: "tenants/a/keys/password", Password: []byte(markers[2])})
	if err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, []byte(h.GetHash()))
	if _, err := c.crypto.VerifyPassword(ctx, &custosv1.VerifyPasswordRequest{Name: "tenants/a/keys/password", Password: []byte(markers[2]), Hash: h.GetHash(), Subject: markers[4]}); err != nil {
		t.Fatal(err)
	}
	dk, err := c.crypto.GenerateDataKey(ctx, &custosv1.GenerateDataKeyRequest{Name: keyName("a"), AssociatedData: []byte(markers[1])})
	if err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, dk.GetPlaintext(), dk.GetWrapped())

	evs := events(t, ts)
	ts.stop() // flushes and closes the export
	exported, err := os.ReadFile(export)
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(exported, []byte("\n")); n < len(evs) {
		t.Fatalf("export has %d lines, the log %d events", n, len(evs))
	}
	var blob []byte
	for _, r := range evs {
		blob = append(blob, r.Leaf...)
		blob = append(blob, r.Event.String()...)
	}
	for i, s := range secrets {
		for where, b := range map[string][]byte{"an event": blob, "the export": exported} {
			if bytes.Contains(b, s) || bytes.Contains(b, []byte(base64.StdEncoding.EncodeToString(s))) {
				t.Errorf("secret %d (%.12q…) is in %s", i, s, where)
			}
		}
	}
	if !bytes.Contains(exported, []byte(`"operation":"verify_password"`)) || !bytes.Contains(exported, []byte(`"code":"INVALID_ARGUMENT"`)) {
		t.Errorf("export lacks the expected lines:\n%s", exported)
	}
}

// verifyRecords checks every record's inclusion in the signed checkpoint.
func verifyRecords(t *testing.T, pub string, resp *custosv1.ListAuditEventsResponse) {
	t.Helper()
	v, err := note.NewVerifier(pub)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := audit.ParseCheckpoint(resp.GetCheckpoint().GetSignedNote(), v)
	if err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	for _, r := range resp.GetRecords() {
		if err := proof.VerifyInclusion(rfc6962.DefaultHasher, r.GetLeafIndex(), cp.Size, audit.LeafHash(r.GetLeaf()), r.GetInclusionProof(), cp.Root); err != nil {
			t.Fatalf("event %d: %v", r.GetLeafIndex(), err)
		}
	}
}

func TestATenantSeesOnlyItsEventsWithProofs(t *testing.T) {
	ts := start(t, newFiles(t), options{policy: auditPolicy})
	setup(t, ts, "a", "b")
	ctx := testContext(t)
	admin := ts.clients(t, idAdmin)
	for _, tn := range []string{"a", "b", "a", "b", "b"} {
		if _, err := admin.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName(tn), Plaintext: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	events(t, ts) // integrate and sign
	auditor := custosv1.NewAuditServiceClient(ts.conn(t, idAuditorA))
	cpResp, err := auditor.GetAuditCheckpoint(ctx, &custosv1.GetAuditCheckpointRequest{Parent: "tenants/a"})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := auditor.ListAuditEvents(ctx, &custosv1.ListAuditEventsRequest{Parent: "tenants/a"})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetRecords()) < 4 { // CreateTenant, CreateKey, 2 × Encrypt
		t.Fatalf("tenant a's view has %d events, want at least 4", len(resp.GetRecords()))
	}
	for _, r := range resp.GetRecords() {
		if r.GetEvent().GetTenant() != "a" {
			t.Fatalf("tenant a's auditor sees an event of tenant %q", r.GetEvent().GetTenant())
		}
	}
	verifyRecords(t, cpResp.GetPublicKey(), resp)

	// Tenant b's events: refused before any lookup, and the refusal is
	// itself audited.
	var header, trailer metadata.MD
	_, err = auditor.ListAuditEvents(ctx, &custosv1.ListAuditEventsRequest{Parent: "tenants/b"}, grpc.Header(&header), grpc.Trailer(&trailer))
	wantCode(t, err, codes.PermissionDenied)
	rid := requestID(header, trailer)
	found := false
	for _, r := range events(t, ts) {
		if r.Event.GetRequestId() == rid {
			found = r.Event.GetCode() == "PERMISSION_DENIED" && r.Event.GetTenant() == "b" && r.Event.GetIdentity() == idAuditorA && r.Event.GetOperation() == "list_audit_events"
		}
	}
	if !found {
		t.Fatal("the denied ListAuditEvents on tenant b is not in the log as such")
	}
	// An admin of everything reading b never gets a proof for a's event
	// ids, and vice versa: the views are disjoint.
	bResp, err := custosv1.NewAuditServiceClient(ts.conn(t, idAdmin)).ListAuditEvents(ctx, &custosv1.ListAuditEventsRequest{Parent: "tenants/b"})
	if err != nil {
		t.Fatal(err)
	}
	aIdx := map[uint64]bool{}
	for _, r := range resp.GetRecords() {
		aIdx[r.GetLeafIndex()] = true
	}
	for _, r := range bResp.GetRecords() {
		if aIdx[r.GetLeafIndex()] || r.GetEvent().GetTenant() != "b" {
			t.Fatalf("event %d appears in both views", r.GetLeafIndex())
		}
	}
	// A consistency proof from an earlier size.
	if cpResp.GetCheckpoint().GetSize() > 1 {
		later, err := auditor.GetAuditCheckpoint(ctx, &custosv1.GetAuditCheckpointRequest{Parent: "tenants/a", FirstSize: cpResp.GetCheckpoint().GetSize()})
		if err != nil {
			t.Fatal(err)
		}
		if err := proof.VerifyConsistency(rfc6962.DefaultHasher, cpResp.GetCheckpoint().GetSize(), later.GetCheckpoint().GetSize(), later.GetConsistencyProof(), cpResp.GetCheckpoint().GetRootHash(), later.GetCheckpoint().GetRootHash()); err != nil {
			t.Fatalf("consistency: %v", err)
		}
	}
}

func TestListAuditEventsRefusesBadFiltersNamingTheField(t *testing.T) {
	ts := start(t, newFiles(t), options{policy: auditPolicy})
	ctx := testContext(t)
	c := custosv1.NewAuditServiceClient(ts.conn(t, idAuditorA))
	now := time.Now()
	for field, req := range map[string]*custosv1.ListAuditEventsRequest{
		"end_time":   {StartTime: timestamppb.New(now), EndTime: timestamppb.New(now.Add(-time.Hour))},
		"start_time": {StartTime: &timestamppb.Timestamp{Seconds: -1 << 62}},
		"operation":  {Operation: "steal_keys"},
		"page_size":  {PageSize: 1001},
		"result":     {Result: "MAYBE"},
		"page_token": {PageToken: "!!"},
	} {
		req.Parent = "tenants/a"
		_, err := c.ListAuditEvents(ctx, req)
		if st := wantCode(t, err, codes.InvalidArgument); !strings.Contains(st.Message(), field) {
			t.Errorf("%s: message %q does not name the field", field, st.Message())
		}
	}
	_, err := c.ListAuditEvents(ctx, &custosv1.ListAuditEventsRequest{Parent: "tenants/a", PageSize: -1})
	wantCode(t, err, codes.InvalidArgument)
}

func TestAuditServiceIsListedAndNeedsAuditRead(t *testing.T) {
	ts := start(t, newFiles(t), options{policy: auditPolicy})
	ctx := testContext(t)
	_, err := custosv1.NewAuditServiceClient(ts.conn(t, idOnlyA)).ListAuditEvents(ctx, &custosv1.ListAuditEventsRequest{Parent: "tenants/a"})
	wantCode(t, err, codes.PermissionDenied)
	st, err := reflectionv1.NewServerReflectionClient(ts.conn(t, idAdmin)).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&reflectionv1.ServerReflectionRequest{MessageRequest: &reflectionv1.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	if !slices.Contains(names, "custos.v1.AuditService") {
		t.Fatalf("reflection lists %v", names)
	}
}

// A caller's own request id (x-request-id) is used: returned, in the
// audit event; a malformed one is replaced by a fresh id.
func TestACallersRequestIDRoundTrips(t *testing.T) {
	ts := start(t, newFiles(t), options{})
	setup(t, ts, "a")
	c := ts.clients(t, idAdmin)
	for _, sent := range []string{"order-7.checkout_42", "bad id with spaces"} {
		var header metadata.MD
		ctx := metadata.AppendToOutgoingContext(testContext(t), server.RequestIDHeader, sent)
		if _, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("a"), Plaintext: []byte("x")}, grpc.Header(&header)); err != nil {
			t.Fatal(err)
		}
		got := requestID(header, nil)
		if valid := !strings.Contains(sent, " "); valid != (got == sent) || got == "" {
			t.Fatalf("sent %q, got %q", sent, got)
		}
		found := false
		for _, r := range events(t, ts) {
			found = found || r.Event.GetRequestId() == got
		}
		if !found {
			t.Fatalf("no audit event with request id %q", got)
		}
	}
}

// Every error carries an ErrorInfo reason from the ErrorReason enum,
// NOT_FOUND and ALREADY_EXISTS included.
func TestErrorsCarryErrorInfo(t *testing.T) {
	ts := start(t, newFiles(t), options{})
	setup(t, ts, "a")
	ctx := testContext(t)
	c := ts.clients(t, idAdmin)
	_, err := c.keys.GetTenant(ctx, &custosv1.GetTenantRequest{Name: "tenants/nobody"})
	if info := errorInfo(wantCode(t, err, codes.NotFound)); info == nil || info.GetReason() != custosv1.ReasonNotFound || info.GetDomain() != custosv1.ErrorDomain {
		t.Fatalf("NOT_FOUND carries %v", info)
	}
	_, err = c.keys.CreateTenant(ctx, &custosv1.CreateTenantRequest{TenantId: "a"})
	if info := errorInfo(wantCode(t, err, codes.AlreadyExists)); info == nil || info.GetReason() != custosv1.ReasonAlreadyExists {
		t.Fatalf("ALREADY_EXISTS carries %v", info)
	}
	if _, ok := custosv1.ErrorReason_value[custosv1.ReasonNotFound]; !ok {
		t.Fatal("NOT_FOUND is not in the ErrorReason enum")
	}
}

// With the trail off, AuditService's refusal carries its ErrorInfo like
// every other error: WRONG_STATE, as FAILED_PRECONDITION's reason.
func TestAuditDisabledCarriesErrorInfo(t *testing.T) {
	ts := start(t, newFiles(t), options{configure: func(c *config.Config) { c.Audit.Disabled = true }})
	setup(t, ts, "a")
	ctx := testContext(t)
	_, err := custosv1.NewAuditServiceClient(ts.conn(t, idAdmin)).GetAuditCheckpoint(ctx, &custosv1.GetAuditCheckpointRequest{Parent: "tenants/a"})
	if info := errorInfo(wantCode(t, err, codes.FailedPrecondition)); info == nil || info.GetReason() != custosv1.ReasonWrongState || info.GetDomain() != custosv1.ErrorDomain {
		t.Fatalf("audit disabled carries %v", info)
	}
}

// INVALID_ARGUMENT carries the standard details: ErrorInfo and a
// google.rpc.BadRequest naming the field, for protovalidate's checks and the
// hand-written ones alike.
func TestInvalidArgumentCarriesBadRequest(t *testing.T) {
	ts := start(t, newFiles(t), options{})
	setup(t, ts, "a")
	ctx := testContext(t)
	c := ts.clients(t, idAdmin)
	for what, call := range map[string]func() error{
		"protovalidate (ListKeys page_size)": func() error {
			_, err := c.keys.ListKeys(ctx, &custosv1.ListKeysRequest{Parent: "tenants/a", PageSize: -1})
			return err
		},
		"by hand (Encrypt plaintext)": func() error {
			_, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("a")})
			return err
		},
	} {
		st := wantCode(t, call(), codes.InvalidArgument)
		var field string
		for _, d := range st.Details() {
			if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) > 0 {
				field = br.GetFieldViolations()[0].GetField()
			}
		}
		if info := errorInfo(st); info == nil || field == "" {
			t.Errorf("%s: ErrorInfo %v, BadRequest field %q", what, info, field)
		}
	}
}

// A failed call's log line names its request id, tenant and key, never data.
func TestFailureLogLinesNameRequestTenantAndKey(t *testing.T) {
	var buf syncBuffer
	ts := start(t, newFiles(t), options{logger: slog.New(slog.NewJSONHandler(&buf, nil))})
	setup(t, ts, "a")
	var header, trailer metadata.MD
	_, err := ts.clients(t, idAdmin).crypto.Decrypt(testContext(t), &custosv1.DecryptRequest{Name: keyName("a"), Ciphertext: []byte("MARKER-not-a-ciphertext")}, grpc.Header(&header), grpc.Trailer(&trailer))
	wantCode(t, err, codes.InvalidArgument)
	rid := requestID(header, trailer)
	logs := string(buf.Bytes())
	line := ""
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, `"finished call"`) && strings.Contains(l, rid) {
			line = l
		}
	}
	if line == "" || !strings.Contains(line, `"tenant":"a"`) || !strings.Contains(line, `"key":"k"`) {
		t.Fatalf("the failure's log line (request id %s): %q", rid, line)
	}
	if strings.Contains(logs, "MARKER") {
		t.Fatal("request data reached the log")
	}
}

// A caller that swapped its arguments, sending a plaintext as the key
// name, finds it neither in the refusal nor in the log: the hand-checked
// calls' name errors echoed it (protovalidate's never did).
func TestASwappedKeyNameIsNotEchoed(t *testing.T) {
	var buf syncBuffer
	ts := start(t, newFiles(t), options{logger: slog.New(slog.NewJSONHandler(&buf, nil))})
	setup(t, ts, "a")
	c := ts.clients(t, idAdmin)
	ctx := testContext(t)
	secret := "MARKER-alice@example.com"
	for what, call := range map[string]func() error{
		"Encrypt": func() error {
			_, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: secret, Plaintext: []byte(keyName("a"))})
			return err
		},
		"BlindIndex": func() error {
			_, err := c.crypto.BlindIndex(ctx, &custosv1.BlindIndexRequest{Name: secret, Data: []byte(keyName("a"))})
			return err
		},
		"EncryptBatch": func() error {
			_, err := c.crypto.EncryptBatch(ctx, &custosv1.EncryptBatchRequest{Name: secret, Items: []*custosv1.EncryptBatchRequest_Item{{Plaintext: []byte("x")}}})
			return err
		},
	} {
		st := wantCode(t, call(), codes.InvalidArgument)
		if strings.Contains(fmt.Sprint(st.Proto()), "MARKER") {
			t.Errorf("%s: the refusal carries the name: %v", what, st.Proto())
		}
	}
	if strings.Contains(string(buf.Bytes()), "MARKER") {
		t.Fatal("the swapped name reached the log")
	}
}

// A caller whose certificate verifies but names no identity is refused
// with UNAUTHENTICATED, and its call is audited like any other: unary
// calls and streams (health watches, reflection) alike.
func TestUnauthenticatedCallsAreAudited(t *testing.T) {
	ts := start(t, newFiles(t), options{})
	ctx := testContext(t)
	conn := ts.conn(t, "spiffe:no-such-workload") // a URI SAN that is no SPIFFE ID
	var header, trailer metadata.MD
	err := conn.Invoke(ctx, custosv1.KeyService_ListTenants_FullMethodName, &custosv1.ListTenantsRequest{}, new(custosv1.ListTenantsResponse), grpc.Header(&header), grpc.Trailer(&trailer))
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("unary: %v, want UNAUTHENTICATED", err)
	}
	unary := requestID(header, trailer)
	st, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("health watch: %v, want UNAUTHENTICATED", err)
	}
	header, _ = st.Header()
	watch := requestID(header, st.Trailer())
	if unary == "" || watch == "" {
		t.Fatalf("request ids: unary %q, watch %q; want both", unary, watch)
	}
	waitFor(t, 10*time.Second, "both refusals are in the log", func() bool {
		found := 0
		for _, r := range events(t, ts) {
			if id := r.Event.GetRequestId(); (id == unary || id == watch) && r.Event.GetCode() == "UNAUTHENTICATED" && r.Event.GetIdentity() == "" {
				found++
			}
		}
		return found == 2
	})
}

// The keystore's INVALID_ARGUMENT messages start "invalid argument: " and
// then the field: BadRequest names the field, not "invalid".
func TestKeystoreInvalidArgumentsNameTheirField(t *testing.T) {
	ts := start(t, newFiles(t), options{})
	setup(t, ts, "a")
	_, err := ts.clients(t, idAdmin).crypto.Encrypt(testContext(t), &custosv1.EncryptRequest{Name: keyName("a"), Plaintext: []byte("x"), AssociatedData: []byte("custos:datakey:x")})
	st := wantCode(t, err, codes.InvalidArgument)
	var fields []string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	if len(fields) != 1 || fields[0] != "associated_data" {
		t.Fatalf("BadRequest fields %v for %q, want [associated_data]", fields, st.Message())
	}
}

// A malformed call is refused before the names in it are read, whatever
// its RPC: its event names no tenant, so a tenant's auditors never see
// another identity's malformed calls as if they were theirs to judge.
func TestAMalformedCallsEventNamesNoTenant(t *testing.T) {
	ts := start(t, newFiles(t), options{policy: auditPolicy})
	setup(t, ts, "a", "b")
	ctx := testContext(t)
	var header, trailer metadata.MD
	_, err := ts.clients(t, idOnlyA).crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("b"), Plaintext: nil}, grpc.Header(&header), grpc.Trailer(&trailer))
	wantCode(t, err, codes.InvalidArgument)
	rid := requestID(header, trailer)
	for _, r := range events(t, ts) {
		if r.Event.GetRequestId() == rid {
			if r.Event.GetTenant() != "" {
				t.Fatalf("the malformed call's event names tenant %q", r.Event.GetTenant())
			}
			return
		}
	}
	t.Fatal("the malformed call's event is not in the log")
}

// An audit page token continues the query it came from: with another
// tenant or other filters it is refused, not taken as a start index that
// would skip events.
func TestAnAuditPageTokenIsBoundToItsQuery(t *testing.T) {
	ts := start(t, newFiles(t), options{policy: auditPolicy})
	setup(t, ts, "a", "b")
	ctx := testContext(t)
	admin := ts.clients(t, idAdmin)
	for range 3 {
		if _, err := admin.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("a"), Plaintext: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	events(t, ts) // integrate and sign
	ac := custosv1.NewAuditServiceClient(ts.conn(t, idAdmin))
	first, err := ac.ListAuditEvents(ctx, &custosv1.ListAuditEventsRequest{Parent: "tenants/a", Operation: "encrypt", PageSize: 1})
	if err != nil || first.GetNextPageToken() == "" {
		t.Fatalf("first page: %v, token %q", err, first.GetNextPageToken())
	}
	tok := first.GetNextPageToken()
	if _, err := ac.ListAuditEvents(ctx, &custosv1.ListAuditEventsRequest{Parent: "tenants/a", Operation: "encrypt", PageSize: 1, PageToken: tok}); err != nil {
		t.Fatalf("the next page of the same query: %v", err)
	}
	for name, req := range map[string]*custosv1.ListAuditEventsRequest{
		"without the filter": {Parent: "tenants/a", PageSize: 1, PageToken: tok},
		"on another tenant":  {Parent: "tenants/b", Operation: "encrypt", PageSize: 1, PageToken: tok},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ac.ListAuditEvents(ctx, req)
			if st := wantCode(t, err, codes.InvalidArgument); !strings.Contains(st.Message(), "another tenant or other filters") {
				t.Fatalf("refused as %q, want the token's query named", st.Message())
			}
		})
	}
}

// A stream's call log line names its request id, as a unary call's does:
// the id the caller got in x-request-id and its audit event carry.
func TestAStreamsLogLineNamesItsRequestID(t *testing.T) {
	logs := &syncBuffer{}
	ts := start(t, newFiles(t), options{logger: slog.New(slog.NewJSONHandler(logs, nil))})
	conn := ts.conn(t, idAdmin)
	ctx, cancel := context.WithCancel(testContext(t))
	st, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	header, err := st.Header()
	if err != nil {
		t.Fatal(err)
	}
	rid := requestID(header, nil)
	cancel() // the watch ends CANCELLED: logged at info
	if rid == "" {
		t.Fatal("the watch got no request id")
	}
	defer func() {
		if t.Failed() {
			t.Log(logs.String())
		}
	}()
	waitFor(t, 10*time.Second, "the watch's log line with its request id", func() bool {
		for line := range strings.Lines(logs.String()) {
			if strings.Contains(line, `"grpc.method":"Watch"`) && strings.Contains(line, `"request_id":"`+rid+`"`) {
				return true
			}
		}
		return false
	})
}

// A stream refused before its identity is known (a certificate naming two
// SPIFFE IDs) gets its call log line, as a unary call refused so does: it
// was audited and counted, but not logged.
func TestAStreamRefusedAtAuthenticationIsLogged(t *testing.T) {
	logs := &syncBuffer{}
	f := newFiles(t)
	ts := start(t, f, options{logger: slog.New(slog.NewJSONHandler(logs, nil))})
	req := pki.IssueRequest{Client: true, Validity: time.Hour}
	for _, id := range []string{"spiffe://custos.test/one", "spiffe://custos.test/two"} {
		u, err := url.Parse(id)
		if err != nil {
			t.Fatal(err)
		}
		req.URIs = append(req.URIs, u)
	}
	certPEM, keyPEM, err := f.pki.ca.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	conn := dial(t, ts.addr, f.pki.clientTLS(cert))
	st, err := healthpb.NewHealthClient(conn).Watch(testContext(t), &healthpb.HealthCheckRequest{})
	if err == nil {
		_, err = st.Recv()
	}
	wantCode(t, err, codes.Unauthenticated)
	defer func() {
		if t.Failed() {
			t.Log(logs.String())
		}
	}()
	waitFor(t, 10*time.Second, "the refused watch's log line", func() bool {
		for line := range strings.Lines(logs.String()) {
			if strings.Contains(line, `"grpc.method":"Watch"`) && strings.Contains(line, `"grpc.code":"Unauthenticated"`) {
				return true
			}
		}
		return false
	})
}
