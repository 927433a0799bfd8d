package pbs_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net/http"
	"testing"
	"time"
)

// A management request is passed on with its body unread: a client that
// announces a huge body and sends none is answered at once, not held while
// the gateway buffers a body it will never get (or a gigabyte it does).
func TestManagementBodyNotBuffered(t *testing.T) {
	h := newHarness(t)
	c, err := tls.Dial("tcp", h.addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	// No Host header, as the Go client sends none.
	fmt.Fprintf(c, "GET /api2/json/version HTTP/1.1\r\nContent-Length: %d\r\n\r\n", 1<<30)
	start := time.Now()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer after %v: %v", time.Since(start), err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200", resp.StatusCode)
	}
}
