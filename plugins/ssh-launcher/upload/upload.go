// Package upload keeps a file on an SSH host identical to a local one: it
// compares SHA-256 digests (computed remotely with sha256sum or shasum) and
// copies the file only when it is missing or differs, over SFTP or, when the
// server has no sftp subsystem, through `cat` in an exec session. The copy
// goes to a temporary name next to the target and is renamed over it, so a
// running copy of the old file is never truncated.
package upload

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

// Method names how a file was copied.
const (
	MethodSFTP = "sftp"
	MethodExec = "exec"
)

// Result reports what Ensure did.
type Result struct {
	// Uploaded is false when the remote file already matched.
	Uploaded bool
	// Method is MethodSFTP or MethodExec when Uploaded.
	Method string
	// SHA256 is the hex digest of the local file.
	SHA256 string
	// Size is the local file's size in bytes.
	Size int64
}

// Run runs cmd on the client's host with stdin as its standard input and
// returns its standard output; a failure carries its standard error.
func Run(client *ssh.Client, cmd string, stdin io.Reader) ([]byte, error) {
	sess, err := client.NewSession()
	if err != nil {
		return nil, fmt.Errorf("open ssh session: %w", err)
	}
	defer sess.Close()
	var stdout, stderr bytes.Buffer
	sess.Stdin = stdin
	sess.Stdout = &stdout
	sess.Stderr = &stderr
	if err := sess.Run(cmd); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg != "" {
			return stdout.Bytes(), fmt.Errorf("remote command %q: %w: %s", cmd, err, msg)
		}
		return stdout.Bytes(), fmt.Errorf("remote command %q: %w", cmd, err)
	}
	return stdout.Bytes(), nil
}

// Quote quotes s for a POSIX shell.
func Quote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// RemoteSHA256 returns the hex SHA-256 digest of the remote file p (an
// absolute path), "" with ok false when it does not exist, or an error
// when no digest tool works there.
func RemoteSHA256(client *ssh.Client, p string) (digest string, ok bool, err error) {
	q := Quote(p)
	cmd := "if [ ! -f " + q + " ]; then echo missing; exit 0; fi; " +
		"{ sha256sum " + q + " || shasum -a 256 " + q + " || sha256 -r " + q + "; } 2>/dev/null | cut -d' ' -f1"
	out, err := Run(client, cmd, nil)
	if err != nil {
		return "", false, err
	}
	s := strings.TrimSpace(string(out))
	if s == "missing" {
		return "", false, nil
	}
	if len(s) != 64 {
		return "", false, fmt.Errorf("no sha256sum, shasum or sha256 on the remote host (got %q)", s)
	}
	return strings.ToLower(s), true, nil
}

// localDigests caches local digests by path, size and modification time.
var (
	localMu      sync.Mutex
	localDigests = map[string]string{}
)

// LocalSHA256 returns the hex SHA-256 digest and size of a local file.
func LocalSHA256(file string) (string, int64, error) {
	st, err := os.Stat(file)
	if err != nil {
		return "", 0, err
	}
	key := fmt.Sprintf("%s\x00%d\x00%d", file, st.Size(), st.ModTime().UnixNano())
	localMu.Lock()
	d, ok := localDigests[key]
	localMu.Unlock()
	if ok {
		return d, st.Size(), nil
	}
	f, err := os.Open(file)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("read %s: %w", file, err)
	}
	d = hex.EncodeToString(h.Sum(nil))
	localMu.Lock()
	localDigests[key] = d
	localMu.Unlock()
	return d, n, nil
}

// Ensure makes the remote file remotePath (absolute) a copy of localPath
// with mode 0755, copying it only when it is missing or its digest differs.
func Ensure(client *ssh.Client, localPath, remotePath string, logger hclog.Logger) (Result, error) {
	if !path.IsAbs(remotePath) {
		return Result{}, fmt.Errorf("remote path %q is not absolute", remotePath)
	}
	digest, size, err := LocalSHA256(localPath)
	if err != nil {
		return Result{}, fmt.Errorf("agent binary: %w", err)
	}
	res := Result{SHA256: digest, Size: size}
	remote, exists, err := RemoteSHA256(client, remotePath)
	if err != nil {
		return res, fmt.Errorf("check %s: %w", remotePath, err)
	}
	if exists && remote == digest {
		logger.Debug("remote file is up to date", "path", remotePath, "sha256", digest)
		return res, nil
	}
	logger.Info("uploading", "path", remotePath, "size", size, "sha256", digest, "remote_sha256", remote, "existed", exists)

	dir := path.Dir(remotePath)
	if _, err := Run(client, "mkdir -p "+Quote(dir), nil); err != nil {
		return res, fmt.Errorf("create %s: %w", dir, err)
	}
	var suffix [6]byte
	_, _ = rand.Read(suffix[:])
	tmp := remotePath + ".upload-" + hex.EncodeToString(suffix[:])

	res.Method = MethodSFTP
	err = viaSFTP(client, localPath, tmp, remotePath)
	if errors.Is(err, errNoSFTP) {
		logger.Info("no sftp subsystem on the remote host, copying through an exec session", "cause", err)
		res.Method = MethodExec
		err = viaExec(client, localPath, tmp, remotePath)
	}
	if err != nil {
		_, _ = Run(client, "rm -f "+Quote(tmp), nil)
		return res, fmt.Errorf("upload %s to %s (%s): %w", localPath, remotePath, res.Method, err)
	}
	after, ok, err := RemoteSHA256(client, remotePath)
	if err != nil || !ok || after != digest {
		return res, fmt.Errorf("upload %s to %s: remote digest after upload is %q (exists %v, err %v), want %s", localPath, remotePath, after, ok, err, digest)
	}
	res.Uploaded = true
	return res, nil
}

var errNoSFTP = errors.New("sftp subsystem unavailable")

func viaSFTP(client *ssh.Client, localPath, tmp, target string) error {
	sc, err := sftp.NewClient(client)
	if err != nil {
		return fmt.Errorf("%w: %v", errNoSFTP, err)
	}
	defer sc.Close()
	src, err := os.Open(localPath)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := sc.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_EXCL)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	if _, err := dst.ReadFrom(src); err != nil {
		dst.Close()
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := dst.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := sc.Chmod(tmp, 0o755); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	if err := sc.PosixRename(tmp, target); err != nil {
		// Servers without the posix-rename extension: mv replaces atomically too.
		if _, err2 := Run(client, "mv -f "+Quote(tmp)+" "+Quote(target), nil); err2 != nil {
			return fmt.Errorf("rename %s: %v; %w", tmp, err, err2)
		}
	}
	return nil
}

func viaExec(client *ssh.Client, localPath, tmp, target string) error {
	src, err := os.Open(localPath)
	if err != nil {
		return err
	}
	defer src.Close()
	cmd := "umask 077 && cat > " + Quote(tmp) + " && chmod 0755 " + Quote(tmp) + " && mv -f " + Quote(tmp) + " " + Quote(target)
	_, err = Run(client, cmd, src)
	return err
}
