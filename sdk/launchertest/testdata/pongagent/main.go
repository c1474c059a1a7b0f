// Command pongagent is a test agent speaking the wire protocol over stdio:
// it answers every Ping with a Pong and exits when stdin closes.
package main

import (
	"bufio"
	"fmt"
	"os"

	"github.com/conveyor-ci/conveyor/sdk/wire"
)

func main() {
	in := bufio.NewReader(os.Stdin)
	out := bufio.NewWriter(os.Stdout)
	for {
		f, _, err := wire.ReadFrame(in, wire.MaxFrameSize)
		if err != nil {
			return
		}
		msg, err := f.Message()
		if err != nil {
			fmt.Fprintln(os.Stderr, "bad frame:", err)
			continue
		}
		if ping, ok := msg.(*wire.Ping); ok {
			if err := wire.WriteFrame(out, wire.NewFrame(&wire.Pong{Nonce: ping.Nonce, UnixNano: ping.UnixNano})); err != nil {
				return
			}
		}
		if in.Buffered() == 0 {
			if err := out.Flush(); err != nil {
				return
			}
		}
	}
}
