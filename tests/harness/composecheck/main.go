// composecheck validates Compose files the way Docker Compose itself does: with
// github.com/compose-spec/compose-go/v2, whose schema package embeds the Compose
// Specification JSON schema (compose-spec.json) and whose loader applies the spec's
// semantic rules (interpolation, references between services, volumes and networks).
//
// Usage: composecheck [-schema-only] FILE...
// Exit 0 when every file is valid; 1 with the reasons on stderr otherwise. With -print it
// writes the canonical (loaded, interpolated) project of the last file as JSON on stdout.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/schema"
	"gopkg.in/yaml.v3"
)

func main() {
	schemaOnly := flag.Bool("schema-only", false, "only validate against the JSON schema")
	print := flag.Bool("print", false, "print the loaded project as JSON")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: composecheck [-schema-only] [-print] FILE...")
		os.Exit(2)
	}
	failed := false
	for _, file := range flag.Args() {
		if err := check(file, *schemaOnly, *print); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", file, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}

func check(file string, schemaOnly, print bool) error {
	raw, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var doc map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return fmt.Errorf("yaml: %w", err)
	}
	if err := schema.Validate(doc); err != nil {
		return fmt.Errorf("compose-spec schema: %w", err)
	}
	if schemaOnly {
		return nil
	}
	abs, _ := filepath.Abs(file)
	opts, err := cli.NewProjectOptions([]string{abs},
		cli.WithWorkingDirectory(filepath.Dir(abs)), cli.WithOsEnv, cli.WithResolvedPaths(true))
	if err != nil {
		return err
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		return fmt.Errorf("compose loader: %w", err)
	}
	if print {
		out, err := json.MarshalIndent(project, "", "  ")
		if err != nil {
			return err
		}
		fmt.Println(string(out))
	}
	return nil
}
