//go:build !linux

package workpool

import "errors"

// setThreadNice cannot set one thread's niceness here.
func setThreadNice(nice int) error {
	if nice == 0 {
		return nil
	}
	return errors.New("workpool: per-thread niceness is supported on Linux only")
}
