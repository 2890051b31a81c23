package main

import (
	"errors"

	"github.com/spf13/pflag"

	"github.com/custos-kms/custos/client"
)

// adFlags are the associated-data flags of the commands that encrypt,
// decrypt or rewrap a value: --ad takes the bytes as given; --ad-part,
// repeated, takes parts encoded as the Go client's
// client.AssociatedData(parts...) encodes them, so that a value a Go
// service encrypted with AssociatedData("customer-42", "email") decrypts
// with --ad-part customer-42 --ad-part email; --no-ad binds nothing.
type adFlags struct {
	raw   string
	parts []string
	none  bool
	// required: one form must be given, --no-ad for none (encrypt,
	// decrypt, rewrap); otherwise none means none (datakey).
	required bool
}

// add declares the flags on fs; what says what the data is bound to.
// required adds --no-ad and makes a choice required.
func (a *adFlags) add(fs *pflag.FlagSet, what string, required bool) {
	a.required = required
	fs.StringVar(&a.raw, "ad", "", "associated data "+what+", byte for byte, e.g. \"customer-42/email\"")
	fs.StringArrayVar(&a.parts, "ad-part", nil, "associated data "+what+" as the Go client's AssociatedData(parts...) encodes it; repeat for each part, in order")
	if required {
		fs.BoolVar(&a.none, "no-ad", false, "bind no associated data")
	}
}

// check is a usage error unless at most one form was given, and one if
// required.
func (a *adFlags) check() error {
	given := 0
	for _, set := range []bool{a.raw != "", len(a.parts) > 0, a.none} {
		if set {
			given++
		}
	}
	switch {
	case given > 1 && a.required:
		return usageError{errors.New("--ad, --ad-part and --no-ad exclude each other")}
	case given > 1:
		return usageError{errors.New("--ad and --ad-part exclude each other")}
	case given == 0 && a.required:
		return usageError{errors.New("pass --ad (or --ad-part, once per part) with the record id and field the value belongs to, or --no-ad to bind nothing")}
	}
	return nil
}

// bytes is the associated data to send: nil for none.
func (a *adFlags) bytes() []byte {
	switch {
	case len(a.parts) > 0:
		return client.AssociatedData(a.parts...)
	case a.raw != "":
		return []byte(a.raw)
	}
	return nil
}
