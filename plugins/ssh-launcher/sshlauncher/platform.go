package sshlauncher

import (
	"bytes"
	"debug/elf"
	"debug/macho"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
)

// Platform is an operating system and architecture in Go's terms
// (GOOS/GOARCH). An empty Platform matches any: a script runs anywhere.
type Platform struct {
	OS   string
	Arch string
}

// String is "os/arch", or "any".
func (p Platform) String() string {
	if p == (Platform{}) {
		return "any"
	}
	return p.OS + "/" + p.Arch
}

// Runs reports whether a binary built for p runs on host.
func (p Platform) Runs(host Platform) bool {
	return p == (Platform{}) || p == host
}

// BinaryPlatform reads the platform a local executable was built for from
// its ELF or Mach-O header. Scripts (#!) run anywhere; other files are an
// error.
func BinaryPlatform(file string) (Platform, error) {
	f, err := os.Open(file)
	if err != nil {
		return Platform{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Platform{}, err
	}
	if !st.Mode().IsRegular() {
		return Platform{}, fmt.Errorf("%s is not a regular file", file)
	}
	head := make([]byte, 4)
	if _, err := io.ReadFull(f, head); err != nil {
		return Platform{}, fmt.Errorf("%s is not an executable: %w", file, err)
	}
	switch {
	case bytes.HasPrefix(head, []byte("#!")):
		return Platform{}, nil
	case bytes.Equal(head, []byte(elf.ELFMAG)):
		ef, err := elf.NewFile(f)
		if err != nil {
			return Platform{}, fmt.Errorf("%s: %w", file, err)
		}
		defer ef.Close()
		osName := "linux"
		switch ef.OSABI {
		case elf.ELFOSABI_FREEBSD:
			osName = "freebsd"
		case elf.ELFOSABI_NETBSD:
			osName = "netbsd"
		case elf.ELFOSABI_OPENBSD:
			osName = "openbsd"
		}
		arch := elfArch(ef)
		if arch == "" {
			return Platform{}, fmt.Errorf("%s: unsupported ELF machine %v", file, ef.Machine)
		}
		return Platform{OS: osName, Arch: arch}, nil
	}
	if mf, err := macho.NewFile(f); err == nil {
		defer mf.Close()
		switch mf.Cpu {
		case macho.CpuAmd64:
			return Platform{OS: "darwin", Arch: "amd64"}, nil
		case macho.CpuArm64:
			return Platform{OS: "darwin", Arch: "arm64"}, nil
		}
		return Platform{}, fmt.Errorf("%s: unsupported Mach-O CPU %v", file, mf.Cpu)
	}
	return Platform{}, fmt.Errorf("%s is neither an ELF or Mach-O executable nor a #! script", file)
}

func elfArch(ef *elf.File) string {
	switch ef.Machine {
	case elf.EM_X86_64:
		return "amd64"
	case elf.EM_AARCH64:
		return "arm64"
	case elf.EM_386:
		return "386"
	case elf.EM_ARM:
		return "arm"
	case elf.EM_RISCV:
		return "riscv64"
	case elf.EM_S390:
		return "s390x"
	case elf.EM_PPC64:
		if ef.ByteOrder.String() == "LittleEndian" {
			return "ppc64le"
		}
		return "ppc64"
	}
	return ""
}

// LocalPlatform is the platform the plugin was built for.
func LocalPlatform() Platform { return Platform{OS: runtime.GOOS, Arch: runtime.GOARCH} }

// ParseUname maps the output of `uname -sm` ("Linux x86_64") to a Platform.
func ParseUname(out string) (Platform, error) {
	f := strings.Fields(out)
	if len(f) < 2 {
		return Platform{}, fmt.Errorf("unexpected `uname -sm` output %q", out)
	}
	var p Platform
	switch strings.ToLower(f[0]) {
	case "linux":
		p.OS = "linux"
	case "darwin":
		p.OS = "darwin"
	case "freebsd":
		p.OS = "freebsd"
	case "openbsd":
		p.OS = "openbsd"
	case "netbsd":
		p.OS = "netbsd"
	default:
		return Platform{}, fmt.Errorf("unsupported remote operating system %q", f[0])
	}
	m := strings.ToLower(f[len(f)-1])
	switch {
	case m == "x86_64" || m == "amd64":
		p.Arch = "amd64"
	case m == "aarch64" || m == "arm64" || m == "aarch64_be":
		p.Arch = "arm64"
	case m == "i386" || m == "i486" || m == "i586" || m == "i686" || m == "i86pc":
		p.Arch = "386"
	case strings.HasPrefix(m, "armv") || m == "arm":
		p.Arch = "arm"
	case m == "riscv64":
		p.Arch = "riscv64"
	case m == "s390x":
		p.Arch = "s390x"
	case m == "ppc64le":
		p.Arch = "ppc64le"
	case m == "ppc64":
		p.Arch = "ppc64"
	default:
		return Platform{}, fmt.Errorf("unsupported remote architecture %q", f[len(f)-1])
	}
	return p, nil
}
