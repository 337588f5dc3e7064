package nsbench

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestQuantile(t *testing.T) {
	hundred := make([]float64, 100)
	for i := range hundred {
		hundred[i] = float64(100 - i) // 100..1, unsorted
	}
	tests := []struct {
		name string
		in   []float64
		q    float64
		want float64
	}{
		{"empty", nil, 0.5, 0},
		{"one", []float64{7}, 0.99, 7},
		{"median odd", []float64{3, 1, 2}, 0.5, 2},
		{"median even: lower middle", []float64{4, 1, 3, 2}, 0.5, 2},
		{"p99 of 100 is the 99th", hundred, 0.99, 99},
		{"p50 of 100", hundred, 0.5, 50},
		{"p0 is the minimum", hundred, 0, 1},
		{"p100 is the maximum", hundred, 1, 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := append([]float64(nil), tt.in...)
			require.Equal(t, tt.want, Quantile(tt.in, tt.q))
			require.Equal(t, before, tt.in, "input not modified")
		})
	}
	require.Equal(t, 2.0, Median([]float64{1, 2, 3}))
}

func TestRawStream(t *testing.T) {
	r := Raw(t, 1<<20)
	require.Greater(t, r.MBps, 0.0)
	require.GreaterOrEqual(t, r.CPUPerMiB, 0.0)
}
