//go:build !linux

package main

import "syscall"

// childProcAttr: without Linux's parent-death signal, a child outlives a
// custos bench that is killed; one that exits normally stops its children.
func childProcAttr() *syscall.SysProcAttr { return nil }
