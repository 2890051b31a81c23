package memory_test

import (
	"testing"

	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/memory"
	"github.com/custos-kms/custos/keystore/storage/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.Test(t, func(t *testing.T) storage.Store { return memory.New() })
}
