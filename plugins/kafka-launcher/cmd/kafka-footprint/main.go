// Command kafka-footprint measures what the master side of the Kafka
// transport costs per node: it opens the master's side of N idle nodes
// against a broker running in a child process and reports the heap, the
// goroutines and the TCP connections to the broker.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkatransport"
)

func main() {
	nodes := flag.Int("nodes", 100, "nodes to open")
	perNode := flag.Bool("per-node-clients", false, "one client per node (the design before the shared client)")
	rate := flag.Int("rate", 0, "events per second written, spread over the nodes' events topics (as agents' heartbeats would), by the broker's process")
	broker := flag.Bool("broker", false, "run the broker (child process)")
	flag.Parse()
	if *broker {
		c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(0))
		if err != nil {
			panic(err)
		}
		fmt.Println(c.ListenAddrs()[0])
		// Start writing events once the parent says so.
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
		if *rate > 0 {
			events(c.ListenAddrs()[0], *nodes, *rate)
		}
		select {}
	}
	cmd := exec.Command(os.Args[0], "-broker", "-nodes", strconv.Itoa(*nodes), "-rate", strconv.Itoa(*rate))
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		panic(err)
	}
	defer cmd.Process.Kill()
	addr, _ := bufio.NewReader(out).ReadString('\n')
	addr = strings.TrimSpace(addr)
	cfg := kafkatransport.Config{Brokers: []string{addr}}
	ctx := context.Background()
	var topics []string
	for i := range *nodes {
		t := kafkatransport.TopicsFor("", fmt.Sprintf("n%d", i))
		topics = append(topics, t.Commands, t.Events)
	}
	if err := kafkatransport.EnsureTopics(ctx, cfg, topics, 1, 1); err != nil {
		panic(err)
	}
	before := heap()
	g0 := runtime.NumGoroutine()
	start := time.Now()
	conns := open(ctx, cfg, *nodes, *perNode)
	took := time.Since(start)
	for _, c := range conns {
		if c, ok := c.(*kafkatransport.Conn); ok {
			go func() {
				for {
					if _, err := c.Recv(); err != nil {
						return
					}
				}
			}()
		}
	}
	fmt.Fprintln(in, "go")
	time.Sleep(3 * time.Second)
	after := heap()
	port := addr[strings.LastIndex(addr, ":")+1:]
	var cpu0 = cpuTime()
	time.Sleep(10 * time.Second)
	cpu := cpuTime() - cpu0
	fmt.Printf("rate=%d/s ", *rate)
	fmt.Printf("nodes=%d open=%s heap=%.1fMiB (%.1f KiB/node) goroutines=%d (%.1f/node) conns_to_broker=%d idle_cpu=%.1f%%\n",
		*nodes, took.Round(time.Millisecond), float64(after-before)/(1<<20), float64(after-before)/1024/float64(*nodes),
		runtime.NumGoroutine()-g0, float64(runtime.NumGoroutine()-g0)/float64(*nodes), tcpConns(port), cpu.Seconds()/10*100)
	for _, c := range conns {
		c.Close()
	}
}

func heap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}

func cpuTime() time.Duration {
	b, _ := os.ReadFile("/proc/self/stat")
	f := strings.Fields(string(b)[strings.LastIndex(string(b), ")")+2:])
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * 10 * time.Millisecond
}

// tcpConns counts established connections to port in /proc/self/net/tcp.
func tcpConns(port string) int {
	p, _ := strconv.Atoi(port)
	want := fmt.Sprintf(":%04X", p)
	f, _ := os.Open("/proc/self/net/tcp")
	defer f.Close()
	n := 0
	s := bufio.NewScanner(f)
	for s.Scan() {
		fl := strings.Fields(s.Text())
		if len(fl) > 3 && strings.HasSuffix(fl[2], want) && fl[3] == "01" {
			n++
		}
	}
	return n
}

// events writes rate small frames a second, round robin over the nodes'
// events topics.
func events(addr string, nodes, rate int) {
	sc := sarama.NewConfig()
	sc.Producer.Partitioner = sarama.NewManualPartitioner
	sc.Producer.Return.Successes = false
	p, err := sarama.NewAsyncProducer([]string{addr}, sc)
	if err != nil {
		panic(err)
	}
	go func() {
		for range p.Errors() {
		}
	}()
	v := kafkatransport.Records(make([]byte, 100), 1)[0]
	tick := time.NewTicker(10 * time.Millisecond)
	per := max(rate/100, 1)
	i := 0
	for range tick.C {
		for range per {
			t := kafkatransport.TopicsFor("", fmt.Sprintf("n%d", i%nodes)).Events
			p.Input() <- &sarama.ProducerMessage{Topic: t, Partition: 0, Value: sarama.ByteEncoder(v)}
			i++
		}
	}
}
