package main

import "syscall"

// childProcAttr makes a child process get SIGTERM when this one dies, even
// by SIGKILL, so that no custos dev or baseline started by custos bench is
// left behind.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
