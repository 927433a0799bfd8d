package main

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// The client commands (gc, verify, prune, stats, pmx *, casync-ssh) name a
// server and credentials the same way: a flag, its CHUNKBRIDGE_* variable,
// or a profile of the config file, in that order of precedence, before
// the built-in default. The file is $XDG_CONFIG_HOME/chunkbridge/config.yaml
// (~/.config/chunkbridge/config.yaml), or --config / CHUNKBRIDGE_CONFIG:
//
//	default_profile: prod
//	profiles:
//	  prod:
//	    chunk_service: chunks.example:9090
//	    chunk_service_tls: true
//	    token_file: ~/.config/chunkbridge/prod-token
//	    pmx_server: backup.example:8007
//	    api: https://backup.example:8080
//	    tls_ca: ~/.config/chunkbridge/prod-ca.pem
//	    cert: ~/.config/chunkbridge/host.pem
//	    key: ~/.config/chunkbridge/host.key
//
// --profile (CHUNKBRIDGE_PROFILE) selects a profile, else default_profile.

// clientConfig is the config file.
type clientConfig struct {
	DefaultProfile string                   `yaml:"default_profile"`
	Profiles       map[string]clientProfile `yaml:"profiles"`
}

// clientProfile is one server setup. Each field's flag tag is the flag it
// stands in for; a command without that flag ignores the field.
type clientProfile struct {
	ChunkService           string `yaml:"chunk_service" flag:"chunk-service"`
	ChunkServiceTLS        *bool  `yaml:"chunk_service_tls" flag:"chunk-service-tls"`
	ChunkServiceCA         string `yaml:"chunk_service_ca" flag:"chunk-service-ca"`
	ChunkServiceServerName string `yaml:"chunk_service_server_name" flag:"chunk-service-server-name"`
	TokenFile              string `yaml:"token_file" flag:"token-file"`
	PMXServer              string `yaml:"pmx_server" flag:"server"`
	API                    string `yaml:"api" flag:"api"`
	TLS                    *bool  `yaml:"tls" flag:"tls"`
	TLSCA                  string `yaml:"tls_ca" flag:"tls-ca"`
	Cert                   string `yaml:"cert" flag:"cert"`
	Key                    string `yaml:"key" flag:"key"`
	CasyncAddr             string `yaml:"casync_addr" flag:"casync-addr"`
}

// values returns the profile's settings keyed by flag name, file names
// with a leading ~/ expanded.
func (p clientProfile) values() map[string]string {
	out := map[string]string{}
	v, t := reflect.ValueOf(p), reflect.TypeOf(p)
	for i := range t.NumField() {
		name := t.Field(i).Tag.Get("flag")
		switch f := v.Field(i); f.Kind() {
		case reflect.String:
			if s := f.String(); s != "" {
				out[name] = expandHome(s)
			}
		case reflect.Pointer:
			if !f.IsNil() {
				out[name] = strconv.FormatBool(f.Elem().Bool())
			}
		}
	}
	return out
}

// profileKey returns the config file key of a flag ("server" is
// pmx_server), for messages.
func profileKey(flagName string) string {
	t := reflect.TypeOf(clientProfile{})
	for i := range t.NumField() {
		if t.Field(i).Tag.Get("flag") == flagName {
			k, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
			return k
		}
	}
	return ""
}

func expandHome(s string) string {
	if rest, ok := strings.CutPrefix(s, "~/"); ok {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, rest)
		}
	}
	return s
}

// defaultConfigPath is $XDG_CONFIG_HOME/chunkbridge/config.yaml, else
// ~/.config/chunkbridge/config.yaml.
func defaultConfigPath() string {
	dir := os.Getenv("XDG_CONFIG_HOME")
	if dir == "" || !filepath.IsAbs(dir) {
		home, err := os.UserHomeDir()
		if err != nil {
			return ""
		}
		dir = filepath.Join(home, ".config")
	}
	return filepath.Join(dir, "chunkbridge", "config.yaml")
}

// loadClientConfig reads the config file at path; a missing file is an
// empty config unless explicit (named by --config). An unknown field is an
// error that names it.
func loadClientConfig(path string, explicit bool) (*clientConfig, error) {
	var cfg clientConfig
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && !explicit {
		return &cfg, nil
	}
	if err != nil {
		return nil, usagef("config file: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return nil, usagef("config file %s: %w (known profile fields: %s)", path, err, strings.Join(profileFields(), ", "))
	}
	return &cfg, nil
}

func profileFields() []string {
	var names []string
	t := reflect.TypeOf(clientProfile{})
	for i := range t.NumField() {
		k, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		names = append(names, k)
	}
	return names
}

// selectProfile returns the settings of the profile named (or the file's
// default_profile), keyed by flag name; nil when no profile applies.
func selectProfile(configPath, name string) (map[string]string, string, error) {
	explicit := configPath != ""
	if !explicit {
		configPath = defaultConfigPath()
		if configPath == "" {
			if name != "" {
				return nil, "", usagef("--profile %s: no config file (no home directory to find it in; set --config)", name)
			}
			return nil, "", nil
		}
	}
	cfg, err := loadClientConfig(configPath, explicit)
	if err != nil {
		return nil, "", err
	}
	if name == "" {
		name = cfg.DefaultProfile
	}
	if name == "" {
		return nil, "", nil
	}
	p, ok := cfg.Profiles[name]
	if !ok {
		var have []string
		for n := range cfg.Profiles {
			have = append(have, n)
		}
		slices.Sort(have)
		return nil, "", usagef("profile %q is not in the config file %s (profiles: %s)", name, configPath, strings.Join(have, ", "))
	}
	return p.values(), name, nil
}

// registerConfigFlags adds --config and --profile to a client command's
// flags; parseFlags then fills the flags not given on the command line or
// in the environment from the profile.
func registerConfigFlags(fs *flag.FlagSet) {
	fs.String("config", "", "config file with server profiles (default $XDG_CONFIG_HOME/chunkbridge/config.yaml, else ~/.config/chunkbridge/config.yaml)")
	fs.String("profile", "", "profile of the config file that names the server and credentials (default: the file's default_profile); flags and CHUNKBRIDGE_* variables override its settings")
}

// applyProfile fills the flags of fs that set does not hold from the
// selected profile. Only for flag sets with --profile.
func applyProfile(fs *flag.FlagSet, set map[string]bool) error {
	values, name, err := selectProfile(fs.Lookup("config").Value.String(), fs.Lookup("profile").Value.String())
	if err != nil || values == nil {
		return err
	}
	// A profile value is an explicit choice, as a flag is: a flag that is
	// only an alias of another (--auth-token-file) is not filled twice.
	for flagName, v := range values {
		if set[flagName] || fs.Lookup(flagName) == nil {
			continue
		}
		if alias, ok := flagAliases[flagName]; ok && set[alias] {
			continue
		}
		if err := fs.Set(flagName, v); err != nil {
			return usagef("profile %s: %s %q: %w", name, profileKey(flagName), v, err)
		}
	}
	return nil
}

// flagAliases maps a flag to its older name, which sets the same value.
var flagAliases = map[string]string{"token-file": "auth-token-file"}
