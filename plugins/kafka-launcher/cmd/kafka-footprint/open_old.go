package main

import (
	"context"
	"fmt"

	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkatransport"
)

// open opens the master's side of n nodes: on one shared Client, or with
// perNode on a client of each node's own (the design before the shared
// client: two sarama clients per node).
func open(ctx context.Context, cfg kafkatransport.Config, n int, perNode bool) []interface{ Close() error } {
	var out []interface{ Close() error }
	var cl *kafkatransport.Client
	if !perNode {
		var err error
		if cl, err = kafkatransport.NewClient(ctx, cfg, hclog.NewNullLogger()); err != nil {
			panic(err)
		}
	}
	for i := range n {
		node := fmt.Sprintf("n%d", i)
		var c *kafkatransport.Conn
		var err error
		if perNode {
			c, err = kafkatransport.OpenMaster(ctx, cfg, node, nil)
		} else {
			c, err = cl.OpenMaster(ctx, node)
		}
		if err != nil {
			panic(err)
		}
		out = append(out, c)
	}
	if cl != nil {
		out = append(out, cl)
	}
	return out
}
