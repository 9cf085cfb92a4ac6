package scanner

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Set is the scanners of one milter, asked all at once.
type Set struct {
	clients []*client
}

// NewSet returns the scanners of cs (validated, defaults applied where
// zero). A scanner is named by its type, or "type@address" when the set
// holds several of that type.
func NewSet(cs []Config, log zerolog.Logger, reg prometheus.Registerer) (*Set, error) {
	perType := map[string]int{}
	for _, c := range cs {
		perType[c.Type]++
	}
	s := &Set{}
	seen := map[string]bool{}
	for i, c := range cs {
		name := c.Type
		if perType[c.Type] > 1 {
			name = c.Type + "@" + c.Address
		}
		if seen[name] {
			s.Close()
			return nil, fmt.Errorf("scanners[%d]: %s is listed twice", i, name)
		}
		seen[name] = true
		cl, err := newClient(c, name, log, reg)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("scanners[%d]: %w", i, err)
		}
		s.clients = append(s.clients, cl)
	}
	return s, nil
}

// Len is the number of scanners.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return len(s.clients)
}

// Scan asks every scanner at once, each within its budget, and returns
// when all have answered or their budgets ran out; the results are in the
// order of the config.
func (s *Set) Scan(ctx context.Context, m Message) []Result {
	if s.Len() == 0 {
		return nil
	}
	out := make([]Result, len(s.clients))
	if len(s.clients) == 1 {
		out[0] = s.clients[0].Scan(ctx, m)
		return out
	}
	var wg sync.WaitGroup
	for i, c := range s.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = c.Scan(ctx, m)
		}()
	}
	wg.Wait()
	return out
}

// Close stops the scanners' probes.
func (s *Set) Close() error {
	if s == nil {
		return nil
	}
	var errs []error
	for _, c := range s.clients {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}
