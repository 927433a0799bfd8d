package casync

import "github.com/chunkbridge/chunkbridge/format/caproto"

// SetTestHooks installs the package's test hooks until the test ends.
func SetTestHooks(t interface{ Cleanup(func()) }, served func(verb string, err error), pullStalled func(), pushHandled func(caproto.Type)) {
	testHookServed, testHookPullStalled, testHookPushHandled = served, pullStalled, pushHandled
	t.Cleanup(func() { testHookServed, testHookPullStalled, testHookPushHandled = nil, nil, nil })
}

// ErrnoFor is the errno an ABORT carries for err.
var ErrnoFor = errnoFor
