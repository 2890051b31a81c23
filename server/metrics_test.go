package server_test

import (
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/custos-kms/custos/internal/config"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// The password metrics operators need: hashing queue depth and rejections,
// lockouts and the refusals they cause.
func TestPasswordMetrics(t *testing.T) {
	ts := start(t, newFiles(t), options{configure: func(c *config.Config) {
		c.Ops.Listen = "127.0.0.1:0"
		c.Passwords.HashWorkers, c.Passwords.HashQueue = 1, 1
	}})
	ctx := testContext(t)
	c := ts.clients(t, idAdmin)
	if _, err := c.keys.CreateTenant(ctx, &custosv1.CreateTenantRequest{TenantId: "a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.keys.CreateKey(ctx, &custosv1.CreateKeyRequest{Parent: "tenants/a", KeyId: "pw", Key: &custosv1.Key{
		Purpose: custosv1.KeyPurpose_KEY_PURPOSE_PASSWORD,
		PasswordPolicy: &custosv1.PasswordPolicy{
			Algorithm: custosv1.PasswordAlgorithm_PASSWORD_ALGORITHM_BCRYPT, BcryptCost: 10,
			LockoutMaxFailures: 2, LockoutWindow: durationpb.New(3600e9), LockoutDuration: durationpb.New(3600e9),
		},
	}}); err != nil {
		t.Fatal(err)
	}
	name := "tenants/a/keys/pw"
	h, err := c.crypto.HashPassword(ctx, &custosv1.HashPasswordRequest{Name: name, Password: []byte("right")})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := c.crypto.VerifyPassword(ctx, &custosv1.VerifyPasswordRequest{Name: name, Password: []byte("wrong"), Hash: h.GetHash(), Subject: "alice"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.crypto.VerifyPassword(ctx, &custosv1.VerifyPasswordRequest{Name: name, Password: []byte("right"), Hash: h.GetHash(), Subject: "alice"}); err == nil {
		t.Fatal("a locked subject was verified")
	}
	// One worker and a queue of one: of 8 hashes at once, some are refused.
	var wg sync.WaitGroup
	var mu sync.Mutex
	exhausted := 0
	for range 8 {
		wg.Go(func() {
			_, err := c.crypto.HashPassword(ctx, &custosv1.HashPasswordRequest{Name: name, Password: []byte("p")})
			if status.Code(err) == codes.ResourceExhausted {
				mu.Lock()
				exhausted++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	ops := ts.rt.OpsAddr().String()
	for name, want := range map[string]float64{
		"custos_password_lockouts_total":         1,
		"custos_password_locked_refusals_total":  1,
		"custos_password_hashing_rejected_total": float64(exhausted),
		"custos_password_hashing_queued":         0,
		"custos_password_hashing_running":        0,
	} {
		if got := metric(t, ops, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if exhausted == 0 {
		t.Error("no hash was refused with one worker and a queue of one")
	}
	for _, action := range []string{"rotate", "destroy", "shred"} {
		if got := metric(t, ops, `custos_scheduler_actions_total\{action="`+action+`"\}`); got != 0 {
			t.Errorf("scheduler %s = %v on a fresh server", action, got)
		}
	}
}
