package workpool

import "golang.org/x/sys/unix"

// setThreadNice sets the niceness of the calling OS thread (on Linux each
// thread has its own).
func setThreadNice(nice int) error {
	if nice == 0 {
		return nil
	}
	return unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), nice)
}
