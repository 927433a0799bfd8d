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
// only another way to send the token. Tickets last ticketTTL. They are
// signed with Server.TicketKey: replicas given one key accept each
// other's tickets, also after a restart. Without it, with a key made at
// start: then a ticket works only at the process that issued it, until it
// stops (clients log in again).

const ticketTTL = 2 * time.Hour

// MinTicketKey is the shortest Server.TicketKey accepted, in bytes.
const MinTicketKey = 32

// ticketKey is the key tickets are signed with: TicketKey, or one made at
// start (logged once, since tickets then fail at other replicas).
func (s *Server) ticketKey() []byte {
	s.keyOnce.Do(func() {
		s.key = s.TicketKey
		if len(s.key) >= MinTicketKey {
			return
		}
		s.key = make([]byte, 32)
		rand.Read(s.key)
		s.log().Info("PBS tickets are signed with a key made at start: a ticket works only at this process and until it stops; give a shared key (--pbs-ticket-key-file) for replicas and restarts")
	})
	return s.key
}

func (s *Server) sign(parts ...string) string {
	m := hmac.New(sha256.New, s.ticketKey())
	m.Write([]byte(strings.Join(parts, "\x00")))
	return base64.RawStdEncoding.EncodeToString(m.Sum(nil))
}

// newTicket returns a ticket and a CSRF token for name.
func (s *Server) newTicket(name string, now time.Time) (ticket, csrf string) {
	t := strings.ToUpper(strconv.FormatInt(now.Unix(), 16))
	return "PBS:" + name + ":" + t + "::" + s.sign("ticket", name, t), t + ":" + s.sign("csrf", name, t)
}

// checkTicket returns the principal name a ticket was made for.
func (s *Server) checkTicket(ticket string, now time.Time) (string, error) {
	rest, ok := strings.CutPrefix(ticket, "PBS:")
	body, mac, ok2 := strings.Cut(rest, "::")
	i := strings.LastIndexByte(body, ':')
	if !ok || !ok2 || i < 0 {
		return "", errors.New("malformed ticket: log in again")
	}
	name, t := body[:i], body[i+1:]
	if !hmac.Equal([]byte(mac), []byte(s.sign("ticket", name, t))) {
		return "", errors.New("invalid ticket (signed with another key: by another server, or before a restart without a shared key): log in again")
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
func (s *Server) checkCSRF(token, name string, now time.Time) error {
	t, mac, ok := strings.Cut(token, ":")
	if !ok || !hmac.Equal([]byte(mac), []byte(s.sign("csrf", name, t))) {
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
	ticket, csrf := s.newTicket(p.Name, time.Now())
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
	name, err := s.checkTicket(c.Value, now)
	if err == nil && mutating {
		err = s.checkCSRF(r.Header.Get("CSRFPreventionToken"), name, now)
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
