package tcpserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// flakyListener fails Accept with errs, one per call, then accepts from
// the real listener.
type flakyListener struct {
	net.Listener
	errs []error
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if len(l.errs) > 0 {
		err := l.errs[0]
		l.errs = l.errs[1:]
		return nil, err
	}
	return l.Listener.Accept()
}

// Out of file descriptors, Serve backs off (growing, from 5ms) and goes on
// serving instead of returning.
func TestAcceptBacksOffOnEMFILE(t *testing.T) {
	real, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	ln := &flakyListener{Listener: real, errs: []error{emfile, emfile, emfile, &net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", syscall.ENFILE)}}}
	var waits []time.Duration
	served := make(chan string, 1)
	s := &Server{
		Handle: func(c net.Conn) {
			b := make([]byte, 5)
			io.ReadFull(c, b)
			served <- string(b)
		},
		sleep: func(d time.Duration) { waits = append(waits, d) },
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- s.Serve(ln) }()
	c, err := net.Dial("tcp", real.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hello"))
	if got := <-served; got != "hello" {
		t.Fatalf("served %q", got)
	}
	// waits is written by Serve before the accept that served us.
	want := []time.Duration{5 * time.Millisecond, 10 * time.Millisecond, 20 * time.Millisecond, 40 * time.Millisecond}
	if fmt.Sprint(waits) != fmt.Sprint(want) {
		t.Fatalf("backoffs %v, want %v", waits, want)
	}
	s.Shutdown(t.Context())
	if err := <-serveErr; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve = %v", err)
	}
}

func TestAcceptFailsOnOtherErrors(t *testing.T) {
	real, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer real.Close()
	bad := errors.New("listener broken")
	s := &Server{Handle: func(net.Conn) {}}
	if err := s.Serve(&flakyListener{Listener: real, errs: []error{bad}}); !errors.Is(err, bad) {
		t.Fatalf("Serve = %v, want %v", err, bad)
	}
}

// Beyond MaxConns a connection gets Refuse's answer and is closed; once a
// connection ends, the next one is served.
func TestMaxConnsRefuses(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	started := make(chan struct{}, 3)
	s := &Server{
		MaxConns: 2,
		Handle: func(c net.Conn) {
			started <- struct{}{}
			c.Write([]byte("served\n"))
			<-release
		},
		Refuse: func(c net.Conn) { c.Write([]byte(ErrTooManyConnections.Error() + "\n")) },
	}
	go s.Serve(ln)
	defer s.Shutdown(context.Background())
	dial := func() string {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b := make([]byte, 100)
		n, _ := io.ReadAtLeast(c, b, 7)
		return string(b[:n])
	}
	for range 2 {
		if got := dial(); got != "served\n" {
			t.Fatalf("got %q, want served", got)
		}
	}
	<-started
	<-started
	if got := dial(); got != ErrTooManyConnections.Error()+"\n" {
		t.Fatalf("third connection got %q, want the refusal", got)
	}
	if s.Active() != 2 {
		t.Fatalf("%d active, want 2", s.Active())
	}
	close(release)
}
