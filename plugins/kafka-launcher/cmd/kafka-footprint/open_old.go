package main

import (
	"context"
	"fmt"
	"sync"

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
	// The master launches its nodes at once, each from its own goroutine.
	conns := make([]*kafkatransport.Conn, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			node := fmt.Sprintf("n%d", i)
			var err error
			if perNode {
				conns[i], err = kafkatransport.OpenMaster(ctx, cfg, node, nil)
			} else {
				conns[i], err = cl.OpenMaster(ctx, node)
			}
			if err != nil {
				panic(err)
			}
		})
	}
	wg.Wait()
	for _, c := range conns {
		out = append(out, c)
	}
	if cl != nil {
		out = append(out, cl)
	}
	return out
}
