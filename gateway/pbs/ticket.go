package pbs

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/chunkbridge/chunkbridge/auth"
)

// Tickets (POST /api2/json/access/ticket): a client that logs in with a
// user name and password gets a ticket for the PBSAuthCookie cookie and a
// CSRF token for its mutating calls, as PBS hands them out. Here the user
// name is a principal's name and the password its token, so a ticket is
// only another way to send the token. Tickets are signed with a key made
// at start: they last ticketTTL, and not across restarts or replicas
// (clients log in again).

const ticketTTL = 2 * time.Hour

// ticketKey signs this process's tickets.
var ticketKey = func() []byte {
	k := make([]byte, 32)
	rand.Read(k)
	return k
}()

func sign(parts ...string) string {
	m := hmac.New(sha256.New, ticketKey)
	m.Write([]byte(strings.Join(parts, "\x00")))
	return base64.RawStdEncoding.EncodeToString(m.Sum(nil))
}

// newTicket returns a ticket and a CSRF token for name.
func newTicket(name string, now time.Time) (ticket, csrf string) {
	t := strings.ToUpper(strconv.FormatInt(now.Unix(), 16))
	return "PBS:" + name + ":" + t + "::" + sign("ticket", name, t), t + ":" + sign("csrf", name, t)
}

// checkTicket returns the principal name a ticket was made for.
func checkTicket(ticket string, now time.Time) (string, error) {
	rest, ok := strings.CutPrefix(ticket, "PBS:")
	body, mac, ok2 := strings.Cut(rest, "::")
	i := strings.LastIndexByte(body, ':')
	if !ok || !ok2 || i < 0 {
		return "", errors.New("malformed ticket: log in again")
	}
	name, t := body[:i], body[i+1:]
	if !hmac.Equal([]byte(mac), []byte(sign("ticket", name, t))) {
		return "", errors.New("invalid ticket (signed by another server, or before a restart): log in again")
	}
	if err := fresh(t, now); err != nil {
		return "", err
	}
	return name, nil
}

func fresh(t string, now time.Time) error {
	sec, err := strconv.ParseInt(t, 16, 64)
	if err != nil || now.Sub(time.Unix(sec, 0)) > ticketTTL || time.Unix(sec, 0).After(now.Add(time.Minute)) {
		return errors.New("expired ticket: log in again")
	}
	return nil
}

// checkCSRF checks a CSRFPreventionToken against the ticket's name.
func checkCSRF(token, name string, now time.Time) error {
	t, mac, ok := strings.Cut(token, ":")
	if !ok || !hmac.Equal([]byte(mac), []byte(sign("csrf", name, t))) {
		return errors.New("a call made with a ticket needs its CSRFPreventionToken header")
	}
	return fresh(t, now)
}

// login answers POST /api2/json/access/ticket {username, password}.
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	ps, err := readParams(r)
	if err != nil {
		replyErr(w, err)
		return
	}
	name, _ := ps.str("username")
	password, _ := ps.str("password")
	p := auth.Anonymous
	if !s.open() {
		p, err = s.checkToken(name, password)
		if err != nil {
			s.audit(auth.Principal{}, r.RemoteAddr, "POST /api2/json/access/ticket", err)
			http.Error(w, "authentication failed: "+err.Error(), http.StatusUnauthorized)
			return
		}
	}
	ticket, csrf := newTicket(p.Name, time.Now())
	reply(w, map[string]string{"username": p.Name, "ticket": ticket, "CSRFPreventionToken": csrf})
}

// authenticateRequest authenticates an API token, or a ticket cookie
// (with its CSRF token when the call changes something).
func (s *Server) authenticateRequest(r *http.Request, mutating bool) (auth.Principal, error) {
	if h := r.Header.Get("Authorization"); h != "" || s.open() {
		return s.authenticate(h)
	}
	c, err := r.Cookie("PBSAuthCookie")
	if err != nil {
		return s.authenticate("")
	}
	now := time.Now()
	name, err := checkTicket(c.Value, now)
	if err == nil && mutating {
		err = checkCSRF(r.Header.Get("CSRFPreventionToken"), name, now)
	}
	if err != nil {
		return auth.Principal{}, err
	}
	if s.Credentials == nil {
		return auth.Principal{}, fmt.Errorf("ticket for %s: no credentials file to look the principal up in", name)
	}
	// Looked up again at each use: a principal removed since the login
	// has no access.
	return s.Credentials.ByName(name)
}
