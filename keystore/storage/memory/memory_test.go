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

func TestWatch(t *testing.T) {
	storagetest.TestWatch(t, storagetest.WatchConfig{
		Open: func(t *testing.T) (storage.Store, storage.Store) {
			s := memory.New()
			return s, s
		},
		Overflow: 1000,
	})
}
