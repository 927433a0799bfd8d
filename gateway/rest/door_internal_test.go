package rest

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
)

const doorID = "abcd" + "ef0123456789abcdef0123456789abcdef0123456789abcdef0123456789"

func doorGET(headers string) string {
	return "GET /casync/chunks/abcd/" + doorID + ".cacnk HTTP/1.1\r\n" + headers + "\r\n"
}

// The door takes only the one request shape it answers; everything else
// goes to net/http.
func TestParseDoorRequest(t *testing.T) {
	for _, c := range []struct {
		name  string
		req   string
		ok    bool
		head  bool
		close bool
		auth  string
	}{
		{name: "GET", req: doorGET("Host: x\r\n"), ok: true},
		{name: "HEAD", req: strings.Replace(doorGET("Host: x\r\n"), "GET", "HEAD", 1), ok: true, head: true},
		{name: "credentials, any case, trimmed", req: doorGET("host: x\r\nAUTHORIZATION:  Bearer t \r\n"), ok: true, auth: "Bearer t"},
		{name: "Connection: close", req: doorGET("Host: x\r\nConnection: keep-alive, Close\r\n"), ok: true, close: true},
		{name: "Content-Length: 0", req: doorGET("Host: x\r\nContent-Length: 0\r\n"), ok: true},
		{name: "no Host", req: doorGET("")},
		{name: "two Hosts", req: doorGET("Host: x\r\nHost: y\r\n")},
		{name: "two credentials", req: doorGET("Host: x\r\nAuthorization: a\r\nAuthorization: b\r\n")},
		{name: "a body", req: doorGET("Host: x\r\nContent-Length: 5\r\n")},
		{name: "chunked", req: doorGET("Host: x\r\nTransfer-Encoding: chunked\r\n")},
		{name: "Expect", req: doorGET("Host: x\r\nExpect: 100-continue\r\n")},
		{name: "Upgrade", req: doorGET("Host: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n")},
		{name: "folded header", req: doorGET("Host: x\r\nX-A: a\r\n b\r\n")},
		{name: "bare LF in a header", req: doorGET("Host: x\r\nX-A: a\nTransfer-Encoding: chunked\r\n")},
		{name: "bare CR in a header", req: doorGET("Host: x\r\nX-A: a\rb\r\n")},
		{name: "space before colon", req: doorGET("Host: x\r\nContent-Length : 5\r\n")},
		{name: "no colon", req: doorGET("Host: x\r\nnocolon\r\n")},
		{name: "HTTP/1.0", req: strings.Replace(doorGET("Host: x\r\n"), "HTTP/1.1", "HTTP/1.0", 1)},
		{name: "PUT", req: strings.Replace(doorGET("Host: x\r\n"), "GET", "PUT", 1)},
		{name: "query", req: strings.Replace(doorGET("Host: x\r\n"), ".cacnk", ".cacnk?a=b", 1)},
		{name: "other path", req: "GET /casync/indexes/a.caibx HTTP/1.1\r\nHost: x\r\n\r\n"},
		{name: "absolute form", req: strings.Replace(doorGET("Host: x\r\n"), "/casync/", "http://x/casync/", 1)},
		{name: "escaped path", req: strings.Replace(doorGET("Host: x\r\n"), "/abcd/", "/ab%63d/", 1)},
		{name: "dot segment", req: strings.Replace(doorGET("Host: x\r\n"), "/chunks/", "/chunks/../chunks/", 1)},
	} {
		t.Run(c.name, func(t *testing.T) {
			req, ok := parseDoorRequest([]byte(c.req), "/casync/chunks/")
			if ok != c.ok {
				t.Fatalf("ok = %v, want %v", ok, c.ok)
			}
			if !ok {
				return
			}
			if req.head != c.head || req.close != c.close || req.cred.Authorization != c.auth || req.n != len(c.req) || req.id.String() != doorID {
				t.Fatalf("got %+v", req)
			}
		})
	}
}

// A request line and headers longer than the door reads, or split over
// many reads, are found (or left to net/http) without consuming them.
func TestReadDoorRequest(t *testing.T) {
	full := doorGET("Host: x\r\n")
	pipelined := full + "PUT /x HTTP/1.1\r\n"
	br := bufio.NewReaderSize(&byteAtATime{s: pipelined}, doorHeaderMax)
	req, ok, err := readDoorRequest(br, "/casync/chunks/")
	if err != nil || !ok || req.n != len(full) {
		t.Fatalf("byte at a time: %+v %v %v", req, ok, err)
	}
	if br.Buffered() < len(full) {
		t.Fatalf("the request was consumed: %d bytes buffered", br.Buffered())
	}

	long := doorGET("Host: x\r\nX-Pad: " + strings.Repeat("a", doorHeaderMax) + "\r\n")
	br = bufio.NewReaderSize(strings.NewReader(long), doorHeaderMax)
	if _, ok, err := readDoorRequest(br, "/casync/chunks/"); ok || err != nil {
		t.Fatalf("long headers: ok %v err %v, want net/http's", ok, err)
	}
	if got, _ := io.ReadAll(br); string(got) != long {
		t.Fatal("long headers: the bytes net/http gets are not the request")
	}

	br = bufio.NewReaderSize(strings.NewReader(full[:20]), doorHeaderMax)
	if _, _, err := readDoorRequest(br, "/casync/chunks/"); err == nil {
		t.Fatal("a request cut short: no error")
	}
}

type byteAtATime struct{ s string }

func (r *byteAtATime) Read(p []byte) (int, error) {
	if r.s == "" {
		return 0, io.EOF
	}
	p[0] = r.s[0]
	r.s = r.s[1:]
	return 1, nil
}

// Whatever the door answers, net/http reads the same way: a request of
// the same method, chunk path and Host, with no body, ending at the same
// byte. So the door and net/http never disagree on where a request ends
// (no request smuggling through the hand-over).
func FuzzDoorAgreesWithNetHTTP(f *testing.F) {
	f.Add([]byte(doorGET("Host: x\r\n")))
	f.Add([]byte(doorGET("Host: x\r\nConnection: close\r\nAuthorization: Basic dTpw\r\n")))
	f.Add([]byte(doorGET("Host: x\r\nContent-Length: 0\r\nX: y\r\n") + "GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte(doorGET("Host: x\r\nTransfer-Encoding: chunked\r\n") + "0\r\n\r\n"))
	f.Add([]byte(doorGET("Host: x\r\nX: a\nContent-Length: 3\r\n") + "abc"))
	f.Fuzz(func(t *testing.T, b []byte) {
		end := bytes.Index(b, []byte("\r\n\r\n"))
		if end < 0 {
			return
		}
		req, ok := parseDoorRequest(b[:end+4], "/casync/chunks/")
		if !ok {
			return
		}
		r := bytes.NewReader(b)
		br := bufio.NewReader(r)
		hr, err := http.ReadRequest(br)
		if err != nil {
			t.Fatalf("the door answers %q, net/http refuses it: %v", b[:end+4], err)
		}
		target := strings.Fields(string(b[:bytes.Index(b, []byte("\r\n"))]))[1]
		if hr.Method != req.method() || hr.URL.Path != target || hr.URL.RawQuery != "" {
			t.Fatalf("door: %s %s, net/http: %s %s (host %q)", req.method(), target, hr.Method, hr.URL, hr.Host)
		}
		if hr.ContentLength != 0 || len(hr.TransferEncoding) > 0 {
			t.Fatalf("net/http sees a body the door does not: %d %v", hr.ContentLength, hr.TransferEncoding)
		}
		// What net/http has not taken (still in r, or read into br's
		// buffer) is what follows the request.
		if used := len(b) - r.Len() - br.Buffered(); used != req.n {
			t.Fatalf("the request ends at byte %d for the door, %d for net/http", req.n, used)
		}
		if hr.Close != req.close {
			t.Fatalf("Connection close: door %v, net/http %v", req.close, hr.Close)
		}
		if got := hr.Header.Get("Authorization"); got != req.cred.Authorization {
			t.Fatalf("Authorization: door %q, net/http %q", req.cred.Authorization, got)
		}
	})
}
