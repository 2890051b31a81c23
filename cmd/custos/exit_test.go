package main

import (
	"fmt"
	"testing"

	"github.com/custos-kms/custos/keystore/backup"
	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/storage"
)

// Commands that work on the store directly (backup, restore, root rewrap,
// audit verify) meet the root's and the store's own errors, not a
// server's status.
func TestExitCodesOfCommandsOnTheStoreDirectly(t *testing.T) {
	for err, want := range map[error]int{
		fmt.Errorf("backup: unwrap: %w", root.ErrUnavailable):      exitUnavailable,
		fmt.Errorf("backup: snapshot: %w", storage.ErrUnavailable): exitUnavailable,
		fmt.Errorf("backup: %w", backup.ErrDamaged):                exitInvalid,
		backup.ErrRestoring: exitPrecondition,
	} {
		if got := exitCode(err); got != want {
			t.Errorf("exit code of %q: %d, want %d", err, got, want)
		}
	}
}
