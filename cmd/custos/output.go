package main

import (
	"fmt"
	"io"
	"strconv"
	"unicode"
)

// outputWriter is a command's standard output that remembers its first
// failed write. A command's writes are many small ones whose errors go
// unchecked (fmt.Fprintln); checkOutputWrites returns the failure instead
// of exit 0, so that `custos rewrap … > new.ct && mv new.ct old.ct` on a full
// disk does not replace a ciphertext with an empty file. After a failure
// every write fails, so nothing follows a gap.
type outputWriter struct {
	w   io.Writer
	err error
}

func (o *outputWriter) Write(p []byte) (int, error) {
	if o.err != nil {
		return 0, o.err
	}
	n, err := o.w.Write(p)
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	if err != nil {
		o.err = fmt.Errorf("writing the output: %w", err)
		return n, o.err
	}
	return n, nil
}

// cellText returns s as is when every rune prints, else quoted with Go's
// escapes: a table cell from a caller (a certificate's common name, which
// the server takes as sent) cannot then start a row of its own or send
// escape sequences to the reader's terminal.
func cellText(s string) string {
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}
