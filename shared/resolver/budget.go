package resolver

import (
	"context"
	"sync"
	"time"
)

// budgetKey is the context key of a message's DNS budget.
type budgetKey struct{}

// budget is one message's allowance of DNS waiting, shared by every
// look-up made with a context that carries it (possibly from several
// goroutines, hence the mutex). What is spent is the time during which at
// least one look-up was waiting: look-ups made in parallel (A and AAAA)
// share the time they overlap, so the budget is a bound on how long the
// message waits for DNS, by the wall clock.
type budget struct {
	mu        sync.Mutex
	limit     time.Duration
	spent     time.Duration // closed waiting periods
	active    int           // look-ups waiting now
	since     time.Time     // start of the current waiting period (active > 0)
	exhausted bool
}

// WithBudget returns a context carrying a budget of d of total DNS waiting:
// each look-up made with it (or a context derived from it) through a Client
// waits at most what is left, and the time the message spends waiting is
// counted against it. Once it is spent, look-ups fail at once with a
// temporary *net.DNSError (IsTimeout, IsTemporary) and send no query. A
// context given a new budget forgets the parent's. d ≤ 0 gives a budget
// that is already spent. Answers from the cache cost nothing.
func WithBudget(ctx context.Context, d time.Duration) context.Context {
	return context.WithValue(ctx, budgetKey{}, &budget{limit: d})
}

// BudgetSpent reports how much of ctx's budget was spent waiting for DNS,
// and whether it ran out (a look-up was cut short or refused by it), so a
// caller can flag the message as degraded (trail: degraded: ["dns"]). A
// context without a budget gives 0, false.
func BudgetSpent(ctx context.Context) (spent time.Duration, exhausted bool) {
	b := budgetFrom(ctx)
	if b == nil {
		return 0, false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.spentAt(time.Now()), b.exhausted
}

func budgetFrom(ctx context.Context) *budget {
	b, _ := ctx.Value(budgetKey{}).(*budget)
	return b
}

func (b *budget) spentAt(now time.Time) time.Duration {
	if b.active > 0 {
		return b.spent + now.Sub(b.since)
	}
	return b.spent
}

// begin starts a look-up's wait and returns what is left of the budget;
// when nothing is, the budget is marked exhausted and no wait starts.
func (b *budget) begin() time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	left := b.limit - b.spentAt(now)
	if left <= 0 {
		b.exhausted = true
		return left
	}
	if b.active == 0 {
		b.since = now
	}
	b.active++
	return left
}

// end ends a wait begun by begin; cut says it ended because the budget ran
// out.
func (b *budget) end(cut bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	b.active--
	if b.active == 0 {
		b.spent += now.Sub(b.since)
	}
	if cut || b.spentAt(now) >= b.limit {
		b.exhausted = true
	}
}
