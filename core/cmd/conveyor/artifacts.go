package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"text/tabwriter"

	"github.com/conveyor-ci/conveyor/core/client"
	"github.com/conveyor-ci/conveyor/core/store"
)

const artifactsUsage = "Usage: conveyor artifacts [-o DIR] JOB NUMBER"

// cmdArtifacts lists a build's artifacts, or with -o downloads them all
// into a directory, each checked against its recorded sha256.
func cmdArtifacts(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("artifacts", flag.ContinueOnError)
	flags.SetOutput(stderr)
	rf := remoteFlags(flags)
	dir := flags.String("o", "", "download every artifact into this directory (created if missing), keeping their paths")
	pos, err := parseArgs(flags, args)
	if err != nil {
		return 2
	}
	if len(pos) != 2 {
		fmt.Fprintln(stderr, artifactsUsage)
		return 2
	}
	job := pos[0]
	n, err := strconv.Atoi(pos[1])
	if err != nil || n < 1 {
		fmt.Fprintf(stderr, "conveyor artifacts: build number %q is not a positive integer\n%s\n", pos[1], artifactsUsage)
		return 2
	}
	c, err := rf.client()
	if err != nil {
		fmt.Fprintf(stderr, "conveyor artifacts: %v\n", err)
		return 2
	}
	list, err := c.Artifacts(ctx, job, n)
	if err != nil {
		remoteError(stderr, "artifacts", apiMessage(err), err)
		return 1
	}
	if *dir == "" {
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "PATH\tSIZE\tMODE\tSHA256")
		for _, a := range list {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", a.Path, a.Size, fs.FileMode(a.Mode).Perm(), a.SHA256)
		}
		_ = tw.Flush()
		return 0
	}
	if len(list) == 0 {
		fmt.Fprintf(stderr, "conveyor artifacts: build %s#%d archived no file\n", job, n)
		return 0
	}
	failed := 0
	for _, a := range list {
		if err := download(ctx, c, job, n, a, *dir); err != nil {
			fmt.Fprintf(stderr, "conveyor artifacts: %s: %v\n", a.Path, err)
			failed++
			continue
		}
		fmt.Fprintf(stdout, "%s (%d bytes)\n", filepath.Join(*dir, filepath.FromSlash(a.Path)), a.Size)
	}
	if failed > 0 {
		fmt.Fprintf(stderr, "conveyor artifacts: %d of %d downloads failed\n", failed, len(list))
		return 1
	}
	return 0
}

// download writes artifact a into dir, at its path, through an os.Root of
// dir (a path from the server cannot lead out of it): into a temporary
// file first, renamed once its sha256 matches the record. The file is
// created with the recorded permission bits, so the umask masks them as
// it does for any file the user creates (a -rwxrwxrwx artifact does not
// land world-writable); setuid, setgid and sticky bits are never set.
func download(ctx context.Context, c *client.Client, job string, n int, a store.Artifact, dir string) error {
	if err := store.CheckArtifactPath(a.Path); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	name := filepath.FromSlash(a.Path)
	if err := root.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		return err
	}
	part := name + ".part"
	if err := root.Remove(part); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	// O_EXCL: the mode given applies (umask masked) to a file this call
	// creates, and the descriptor writes even when the mode has no write
	// bit.
	f, err := root.OpenFile(part, os.O_CREATE|os.O_EXCL|os.O_WRONLY, fs.FileMode(a.Mode).Perm())
	if err != nil {
		return err
	}
	h := sha256.New()
	got, err := c.DownloadArtifact(ctx, job, n, a.Path, io.MultiWriter(f, h))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && (got != a.Size || hex.EncodeToString(h.Sum(nil)) != a.SHA256) {
		err = fmt.Errorf("got %d bytes with sha256 %x, want %d bytes with sha256 %s", got, h.Sum(nil), a.Size, a.SHA256)
	}
	if err == nil {
		err = root.Rename(part, name)
	}
	if err != nil {
		_ = root.Remove(part)
	}
	return err
}
