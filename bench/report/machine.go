package report

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
)

// Machine describes the host a run measured.
type Machine struct {
	// CPU is the processor's model name.
	CPU string
	// Cores is the number of logical CPUs the run could use.
	Cores int
	// MemoryBytes is the total physical memory.
	MemoryBytes int64
	// Kernel is the kernel's name and release.
	Kernel string
	// Go is the Go version the benchmark was built with.
	Go string
	// Load is the load average (1, 5, 15 minutes) when the run started and
	// ended: the machine may be shared.
	Load string
}

// LoadAverage is /proc/loadavg's first three fields.
func LoadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// ThisMachine describes the running host from /proc.
func ThisMachine() Machine {
	m := Machine{Cores: runtime.NumCPU(), Go: runtime.Version(), CPU: "unknown", Kernel: "unknown"}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		if s := cpuModel(f); s != "" {
			m.CPU = s
		}
		f.Close()
	}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		m.MemoryBytes, _ = memTotal(f)
		f.Close()
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = "Linux " + string(bytes.TrimSpace(b))
	}
	return m
}

func (m Machine) pairs() [][2]string {
	return [][2]string{
		{"CPU", m.CPU},
		{"cores", strconv.Itoa(m.Cores)},
		{"memory", Size(m.MemoryBytes)},
		{"kernel", m.Kernel},
		{"Go", m.Go},
		{"load average (start -> end)", m.Load},
	}
}

// cpuModel is the first "model name" of a /proc/cpuinfo.
func cpuModel(r io.Reader) string {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// memTotal is MemTotal of a /proc/meminfo, in bytes.
func memTotal(r io.Reader) (int64, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "MemTotal:" {
			kib, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("meminfo: MemTotal %q: %w", f[1], err)
			}
			return kib << 10, nil
		}
	}
	return 0, fmt.Errorf("meminfo: no MemTotal")
}
