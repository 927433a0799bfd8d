package pmx

// SetDownloadsFullHook sets the hook run when a connection's read loop
// waits for its queued downloads; nil removes it.
func SetDownloadsFullHook(f func()) { testHookDownloadsFull = f }
