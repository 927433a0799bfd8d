package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/chunkbridge/chunkbridge/auth"
)

// authCommand runs `chunkbridge auth SUBCOMMAND`.
func authCommand(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usagef("auth: which subcommand? want add-token (see chunkbridge auth -h)")
	}
	if wantsHelp(args) {
		return printHelp(stdout, "auth")
	}
	switch args[0] {
	case "add-token":
		return authAddToken(args[1:], stdout, stderr)
	}
	return usagef("auth %s: unknown subcommand; want add-token (see chunkbridge auth -h)", args[0])
}

// tokenEntry is what `auth add-token --json` prints.
type tokenEntry struct {
	Name        string `json:"name"`
	Tenant      string `json:"tenant"`
	Role        string `json:"role"`
	Token       string `json:"token"`
	TokenSHA256 string `json:"token_sha256"`
	// Entry is the YAML list item to add under "principals:".
	Entry string `json:"entry"`
}

// authAddToken creates a principal's token: it prints the token, once, and
// the credentials file entry that holds only its hash. Nothing is written.
func authAddToken(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("auth add-token", stdout)
	tenant := fs.String("tenant", auth.DefaultTenant, "the principal's tenant; one other than \"default\" must be listed under tenants: in the file")
	role := fs.String("role", "", "read, append, write or admin (docs/auth.md); required")
	asJSON := fs.Bool("json", false, "print name, tenant, role, token, token_sha256 and the YAML entry as JSON")
	flags, pos := splitArgs(fs, args)
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := parseFlags(fs, flags, log); err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("auth add-token: want one NAME, got %d arguments (see chunkbridge auth add-token -h)", len(pos))
	}
	if *role == "" {
		return usagef("auth add-token: --role is required: read, append, write or admin (see chunkbridge auth add-token -h)")
	}
	token, hash, entry, err := auth.NewTokenEntry(pos[0], *tenant, *role)
	if err != nil {
		return usagef("auth add-token: %v", err)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(tokenEntry{Name: pos[0], Tenant: *tenant, Role: *role, Token: token, TokenSHA256: hash, Entry: entry})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# The token of %s (tenant %s, role %s). It is shown only now: the\n", pos[0], *tenant, *role)
	fmt.Fprintf(&b, "# credentials file keeps its hash. Hand it to the client.\n%s\n\n", token)
	b.WriteString("# Add this under \"principals:\" in the credentials file (serve re-reads it):\n")
	if *tenant != auth.DefaultTenant {
		fmt.Fprintf(&b, "# (and list the tenant under \"tenants:\", if it is not yet: - name: %s)\n", *tenant)
	}
	b.WriteString(entry)
	_, err = io.WriteString(stdout, b.String())
	return err
}
