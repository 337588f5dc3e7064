package mesh

import "time"

// WithStatsInterval makes the node report its peers to the service at
// least every interval, looking for changed paths every check.
func WithStatsInterval(interval, check time.Duration) Option {
	return func(c *config) { c.statsInterval, c.statsCheck = interval, check }
}

// StatsReport and StatsDue expose statsReport and statsDue.
var (
	StatsReport = statsReport
	StatsDue    = statsDue
)
