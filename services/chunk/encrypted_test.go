package chunk_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/format/datablob"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/storage"
)

const blobEnc = chunkbridgev1.Encoding_ENCODING_DATABLOB

// encryptedBlob is an encrypted DataBlob of payload: the server cannot
// decrypt, so any bytes will do as ciphertext.
func encryptedBlob(t testing.TB, kind datablob.Kind, payload []byte) []byte {
	t.Helper()
	b, err := datablob.Blob{Kind: kind, IV: [datablob.IVSize]byte{1}, Tag: [datablob.TagSize]byte{2}, Payload: payload}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The same id uploaded plain and encrypted is two objects, and an
// existence check of one space never answers for the other.
func TestEncryptedChunkIsApartFromPlain(t *testing.T) {
	f := newFixture(t, chunk.Config{})
	data := randomData(t, 4096)
	id := idOf(sha256Alg, data)
	blob := encryptedBlob(t, datablob.Encrypted, data)

	acks := f.upload(t, &chunkbridgev1.UploadChunksRequest{Id: id, Algorithm: sha256Alg, Encoding: blobEnc, Data: blob, Encrypted: true, Size: int64(len(data))})
	if acks[0].GetCode() != 0 || !acks[0].GetCreated() {
		t.Fatalf("encrypted upload: %v", acks[0])
	}
	miss, err := f.client.FindMissingChunks(t.Context(), &chunkbridgev1.FindMissingChunksRequest{Ids: []string{id}})
	if err != nil || len(miss.GetMissing()) != 1 {
		t.Fatalf("plain space answers for an encrypted chunk: %v %v", miss, err)
	}
	acks = f.upload(t, &chunkbridgev1.UploadChunksRequest{Id: id, Algorithm: sha256Alg, Encoding: rawEnc, Data: data})
	if acks[0].GetCode() != 0 || !acks[0].GetCreated() {
		t.Fatalf("plain upload of the same id: %v", acks[0])
	}
	var keys []string
	f.store.List(t.Context(), "", func(i storage.Info) error { keys = append(keys, i.Key); return nil })
	want := []string{"chunks/" + id[:4] + "/" + id + ".cacnk", "encrypted/chunks/" + id[:4] + "/" + id + ".cacnk"}
	for _, k := range want {
		if !slices.Contains(keys, k) {
			t.Errorf("no object %s in %v", k, keys)
		}
	}

	// Served as stored, whatever encoding is asked for.
	s, err := f.client.DownloadChunks(t.Context(), &chunkbridgev1.DownloadChunksRequest{Ids: []string{id}, Encoding: rawEnc, Encrypted: true})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Recv()
	if err != nil || got.GetCode() != 0 || got.GetEncoding() != blobEnc || !bytes.Equal(got.GetData(), blob) || got.GetSize() != int64(len(data)) {
		t.Fatalf("encrypted download: %v %v", got, err)
	}
	st, err := f.client.StatChunk(t.Context(), &chunkbridgev1.StatChunkRequest{Id: id, Encrypted: true})
	if err != nil || !st.GetChunk().GetEncrypted() || st.GetChunk().GetStoredSize() != int64(len(blob)) {
		t.Fatalf("stat: %v %v", st, err)
	}
}

func TestEncryptedChunkRefusals(t *testing.T) {
	f := newFixture(t, chunk.Config{})
	data := randomData(t, 1000)
	sum := sha256.Sum256(data)
	id := hex.EncodeToString(sum[:])
	bad := encryptedBlob(t, datablob.EncryptedZstd, data)
	bad[len(bad)-1] ^= 1 // CRC no longer matches
	plainBlob, _ := datablob.EncodeRaw(data)
	for name, req := range map[string]*chunkbridgev1.UploadChunksRequest{
		"crc":                 {Id: id, Encoding: blobEnc, Data: bad, Encrypted: true, Size: 1000},
		"plain kind":          {Id: id, Encoding: blobEnc, Data: plainBlob, Encrypted: true, Size: 1000},
		"no size":             {Id: id, Encoding: blobEnc, Data: encryptedBlob(t, datablob.Encrypted, data), Encrypted: true},
		"not blob":            {Id: id, Encoding: rawEnc, Data: data, Encrypted: true, Size: 1000},
		"plain blob encoding": {Id: id, Encoding: blobEnc, Data: encryptedBlob(t, datablob.Encrypted, data), Size: 1000},
	} {
		ack := f.upload(t, req)[0]
		if ack.GetCode() == int32(codes.OK) {
			t.Errorf("%s: accepted", name)
		}
	}
	var n int
	f.store.List(t.Context(), "", func(storage.Info) error { n++; return nil })
	if n != 0 {
		t.Errorf("%d objects stored by refused uploads", n)
	}
}

// A whole 16 MiB PBS chunk, encrypted, is larger than MaxSize with its
// header, and still accepted: PBS's limit, not casync's.
func TestEncryptedChunkOfPBSMaximum(t *testing.T) {
	f := newFixture(t, chunk.Config{})
	data := make([]byte, datablob.MaxChunkSize)
	id := idOf(sha256Alg, []byte("keyed digest"))
	blob := encryptedBlob(t, datablob.Encrypted, data)
	ack := f.upload(t, &chunkbridgev1.UploadChunksRequest{Id: id, Algorithm: sha256Alg, Encoding: blobEnc, Data: blob, Encrypted: true, Size: int64(len(data))})[0]
	if ack.GetCode() != 0 {
		t.Fatalf("a %d-byte encrypted chunk: %v", len(blob), ack.GetMessage())
	}
}
