package session

import (
	"time"

	"github.com/chunkbridge/chunkbridge/internal/budget"
)

// Budget is budget.Budget, which the chunk service's streams share too.
type Budget = budget.Budget

// NewBudget returns a budget of size units; size must be positive.
func NewBudget(size int64) *Budget { return budget.New(size) }

// defaultStall is Config.StallTimeout's default.
const defaultStall = 5 * time.Second
