//go:build !(linux && (amd64 || arm64))

package compat

// The kernel layouts this package writes by hand are 64-bit Linux's: on
// other targets the build stops here, with this name in the error.
var _ = xdevmem_needs_linux_amd64_or_arm64
