//go:build race

package tests

// raceBuild: the tests run under the race detector, and so does the
// xdevmem binary they build.
const raceBuild = true
