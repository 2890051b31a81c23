package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

// openPTY opens a pseudo-terminal pair: what the test types into master,
// the command reads from tty.
func openPTY(t *testing.T) (master, tty *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { master.Close() })
	fd := int(master.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	tty, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tty.Close() })
	return master, tty
}

// A password typed at a terminal is asked for and read up to the end of
// its line without being echoed (it waited for end of input, echoing);
// interrupted, the terminal gets its echo back.
func TestAPasswordTypedAtATerminalIsNotEchoed(t *testing.T) {
	master, tty := openPTY(t)
	cmd := &cobra.Command{}
	var stderr bytes.Buffer
	cmd.SetIn(tty)
	cmd.SetErr(&stderr)
	cmd.SetContext(t.Context())
	done := make(chan []byte, 1)
	go func() {
		pw, err := readPassword(cmd, 0)
		if err != nil {
			t.Error(err)
		}
		done <- pw
	}()
	// Typed once the prompt is up (the echo is off by then).
	deadline := time.Now().Add(10 * time.Second)
	for {
		if termios, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS); err == nil && termios.Lflag&unix.ECHO == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the terminal's echo never went off")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := master.Write([]byte("correct horse\n")); err != nil {
		t.Fatal(err)
	}
	select {
	case pw := <-done:
		if string(pw) != "correct horse" {
			t.Fatalf("read %q", pw)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the password line was not taken within 10s")
	}
	mfd := int(master.Fd()) // once: each Fd call makes it blocking again
	if err := unix.SetNonblock(mfd, true); err != nil {
		t.Fatal(err)
	}
	echo := make([]byte, 256)
	n, _ := unix.Read(mfd, echo)
	if n > 0 && bytes.Contains(echo[:n], []byte("horse")) {
		t.Fatalf("the terminal echoed the password: %q", echo[:n])
	}
	if !bytes.Contains(stderr.Bytes(), []byte("Password: ")) {
		t.Fatalf("no prompt: %q", stderr.String())
	}

	// Interrupted: the echo comes back.
	ctx, cancel := context.WithCancel(t.Context())
	cmd.SetContext(ctx)
	errc := make(chan error, 1)
	go func() { _, err := readPassword(cmd, 0); errc <- err }()
	time.Sleep(50 * time.Millisecond)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted: %v", err)
	}
	termios, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	if err != nil || termios.Lflag&unix.ECHO == 0 {
		t.Fatalf("after the interrupt the echo is off (%v)", err)
	}
}
