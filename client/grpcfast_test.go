package client_test

import "github.com/chunkbridge/chunkbridge/internal/grpcfast"

// The client's tests run with the codec and buffer pool the binary
// installs, so that reads into pooled buffers (grpcfast.Received, freed
// by StoredBytes.Close) are what TestOpenStoredConcurrent checks byte for
// byte.
func init() { grpcfast.Install() }
