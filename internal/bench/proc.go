package bench

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// CPUReader reads the CPU time (user + system) a server process has used.
type CPUReader interface {
	CPU() (time.Duration, error)
}

// ProcCPU reads a local process's CPU time from /proc/PID/stat.
type ProcCPU int

// clockTick is Linux's USER_HZ, the unit of /proc/PID/stat times.
const clockTick = 10 * time.Millisecond

// CPU implements CPUReader.
func (p ProcCPU) CPU() (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", int(p)))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields after its closing
	// parenthesis are space-separated: utime and stime are the 12th and
	// 13th of them (fields 14 and 15 of the whole line).
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", int(p))
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", int(p))
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad times", int(p))
	}
	return time.Duration(ut+st) * clockTick, nil
}

// hostTicks is the machine's CPU time from /proc/stat, in clock ticks: idle
// (idle and iowait) and in total, over all cores.
type hostTicks struct{ idle, total uint64 }

// readHostTicks reads /proc/stat's first line ("cpu  user nice system idle
// iowait irq softirq steal ...").
func readHostTicks() (hostTicks, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return hostTicks{}, err
	}
	defer f.Close()
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil {
		return hostTicks{}, fmt.Errorf("/proc/stat: %w", err)
	}
	return parseHostTicks(line)
}

func parseHostTicks(line string) (hostTicks, error) {
	fields := strings.Fields(line)
	if len(fields) < 6 || fields[0] != "cpu" {
		return hostTicks{}, fmt.Errorf("/proc/stat: unexpected first line %.40q", line)
	}
	var t hostTicks
	// Guest time (fields 10 and 11) is already counted in user and nice.
	for i, f := range fields[1:min(len(fields), 9)] {
		n, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return hostTicks{}, fmt.Errorf("/proc/stat: field %d: %w", i+1, err)
		}
		t.total += n
		if i == 3 || i == 4 { // idle, iowait
			t.idle += n
		}
	}
	return t, nil
}

// Metrics reads a server's CPU time (process_cpu_seconds_total) and
// allocation count (go_memstats_mallocs_total) from its Prometheus
// endpoint: Custos's ops listener (/metrics), for a server on another
// machine or whose PID is unknown, or the baseline's metrics listener.
type Metrics string

// The metrics it reads.
const (
	cpuMetric    = "process_cpu_seconds_total"
	allocsMetric = "go_memstats_mallocs_total"
)

// CPU implements CPUReader.
func (m Metrics) CPU() (time.Duration, error) {
	f, err := scrapeOne(string(m), cpuMetric)
	return seconds(f), err
}

// Allocs implements AllocReader.
func (m Metrics) Allocs() (uint64, error) {
	f, err := scrapeOne(string(m), allocsMetric)
	return uint64(f), err
}

// AllocReader reads how many heap objects a server process has allocated
// since it started.
type AllocReader interface {
	Allocs() (uint64, error)
}

// seconds converts a metric in seconds.
func seconds(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }

// scrapeOne is scrapeMetrics for one name that must be there.
func scrapeOne(url, name string) (float64, error) {
	vals, err := scrapeMetrics(url, name)
	if err != nil {
		return 0, err
	}
	f, ok := vals[name]
	if !ok {
		return 0, fmt.Errorf("%s: no %s", url, name)
	}
	return f, nil
}

// scrapeMetrics reads the named unlabelled samples from a Prometheus text
// endpoint (within 5 s); a name it does not find is absent from the map.
func scrapeMetrics(url string, names ...string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	out := make(map[string]float64, len(names))
	for sc.Scan() {
		line := sc.Text()
		for _, name := range names {
			v, ok := strings.CutPrefix(line, name+" ")
			if !ok {
				continue
			}
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return nil, fmt.Errorf("%s: %s: %w", url, name, err)
			}
			out[name] = f
		}
	}
	return out, sc.Err()
}
