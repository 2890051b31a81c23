// Package localkms runs the awskms root against local-kms
// (github.com/nsmithuk/local-kms), a third-party AWS KMS emulator built
// from its Go module by the tests and run as a process of its own on
// loopback. It lives in a nested module so that the emulator's
// dependencies stay out of the main go.mod.
package localkms
