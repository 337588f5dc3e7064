package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/wiremesh/wiremesh/bench/measure"
)

func TestSummarize(t *testing.T) {
	w := []measure.Result{
		{MBps: 100, RawMBps: 1000, CPUPerMiB: 4, FirstByteMs: []float64{10, 20}},
		{MBps: 300, RawMBps: 1000, CPUPerMiB: 2, FirstByteMs: []float64{30}},
		{MBps: 200, RawMBps: 2000, CPUPerMiB: 3, FirstByteMs: []float64{40}},
	}
	ts := []measure.Result{
		{MBps: 50, RawMBps: 1000, CPUPerMiB: 8, FirstByteMs: []float64{100}},
		{MBps: 50, RawMBps: 1000, CPUPerMiB: 8, FirstByteMs: []float64{200}},
		{MBps: 20, RawMBps: 2000, CPUPerMiB: 6, FirstByteMs: []float64{300}},
	}
	s := summarize(map[string][]measure.Result{"wiremesh": w, "tsnet": ts})
	got := s.sys["wiremesh"]
	// toRaw per round: 0.1, 0.3, 0.1 → median 0.1; cpu 4, 2, 3 → 3.
	if got.toRaw != 0.1 || got.cpu != 3 || got.p50 != 20 || got.p99 != 40 {
		t.Errorf("wiremesh medians = %+v", got)
	}
	// Per round, wiremesh/tsnet: rate (0.1/0.05, 0.3/0.05, 0.1/0.01) = (2, 6, 10); cpu (2, 4, 2).
	var rate, cpu []float64
	for _, f := range s.perRound {
		rate, cpu = append(rate, f.toRaw), append(cpu, f.cpu)
	}
	if want := []float64{2, 6, 10}; !near(rate, want) {
		t.Errorf("per-round rate ratios = %v, want %v", rate, want)
	}
	if want := []float64{2, 4, 2}; !near(cpu, want) {
		t.Errorf("per-round CPU ratios = %v, want %v", cpu, want)
	}
	var out bytes.Buffer
	s.table(&out)
	// Advantage column: throughput/raw 0.1/0.05 = 2×; CPU 8/3.
	for _, want := range []string{"throughput / raw loopback TCP                 0.100      0.050 2.00×", "CPU per MiB, ms (user+sys)                     3.00       8.00 2.67×"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}

func near(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if d := a[i] - b[i]; d > 1e-9 || d < -1e-9 {
			return false
		}
	}
	return true
}
