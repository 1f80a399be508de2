package netns

// SetTestHook makes NewPair call fn after each set-up step ("veth", "addr",
// "up", "features") and fail with its error; restore undoes it.
func SetTestHook(fn func(step string) error) (restore func()) {
	old := testHook
	testHook = fn
	return func() { testHook = old }
}
