//go:build !race

package tests

// raceBuild: the tests run without the race detector.
const raceBuild = false
