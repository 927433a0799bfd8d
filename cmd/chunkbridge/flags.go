package main

import (
	"errors"
	"flag"
	"io"
	"log/slog"
	"os"
	"strings"
)

// envPrefix is the prefix of the environment variables that stand in for
// flags not given on the command line.
const envPrefix = "CHUNKBRIDGE_"

// envName is the variable for a flag: --s3-endpoint is CHUNKBRIDGE_S3_ENDPOINT.
func envName(flagName string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseFlags parses args, then fills every flag not set on the command line
// from its environment variable, and warns about CHUNKBRIDGE_ variables
// that match no flag (a typo in a manifest would otherwise pass silently).
// A client command's flag set (one with --profile) then takes the flags
// still unset from the config file's profile (applyProfile).
// A mistake is a usageError; -h prints fs.Usage and returns flag.ErrHelp.
func parseFlags(fs *flag.FlagSet, args []string, log *slog.Logger, ignoreEnv ...string) error {
	// The flag package would print errors and the help alike through Usage
	// to one output; this reports errors once, and help only when asked.
	help, out := fs.Usage, fs.Output()
	fs.Usage = func() {}
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.Usage = help
	fs.SetOutput(out)
	switch {
	case errors.Is(err, flag.ErrHelp):
		help()
		return err
	case err != nil:
		return usagef("%s: %v (see %s -h)", strings.TrimPrefix(fs.Name(), "chunkbridge "), err, fs.Name())
	case fs.NArg() > 0:
		return usagef("%s: unexpected argument %q (see %s -h)", strings.TrimPrefix(fs.Name(), "chunkbridge "), fs.Arg(0), fs.Name())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	// The config file's variables are read by the client commands only;
	// exported for them, they are no typo elsewhere.
	known := map[string]bool{envName("config"): true, envName("profile"): true}
	for _, name := range ignoreEnv {
		known[name] = true
	}
	fs.VisitAll(func(f *flag.Flag) {
		name := envName(f.Name)
		known[name] = true
		v, ok := os.LookupEnv(name)
		if !ok || set[f.Name] || err != nil {
			return
		}
		if e := fs.Set(f.Name, v); e != nil {
			err = usagef("environment %s=%q: %w", name, v, e)
		}
	})
	if err != nil {
		return err
	}
	if fs.Lookup("profile") != nil { // a client command: flag > env > profile > default
		given := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { given[f.Name] = true }) // the command line and the environment
		if err := applyProfile(fs, given); err != nil {
			return err
		}
	}
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, envPrefix) && !known[name] {
			log.Warn("environment variable matches no flag of this command; ignored", "var", name)
		}
	}
	return nil
}

// newLogger writes JSON or text records to w at the given level.
func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, usagef("--log-format %q: want json or text", format)
}
