package main

import (
	"fmt"
	"io"
	"slices"

	"github.com/wiremesh/wiremesh/bench/measure"
)

// summary holds the medians over the rounds of each system.
type summary struct {
	rounds int
	sys    map[string]figures
	// perRound are the ratios wiremesh/tsnet of the children run next to
	// each other in each round.
	perRound []figures
}

// figures are one system's medians (or, in perRound, one round's ratios).
type figures struct {
	toRaw, mbps, rawMBps, cpu, rawCPU float64
	p50, p99                          float64 // join → first echoed byte, ms, over every join of every round
	peakHeap, afterHeap, idleHeap     float64 // MiB per member
}

func summarize(results map[string][]measure.Result) summary {
	s := summary{sys: map[string]figures{}}
	for name, rs := range results {
		s.rounds = max(s.rounds, len(rs))
		col := func(f func(measure.Result) float64) float64 {
			var xs []float64
			for _, r := range rs {
				xs = append(xs, f(r))
			}
			return measure.Median(xs)
		}
		var joins []float64
		for _, r := range rs {
			joins = append(joins, r.FirstByteMs...)
		}
		s.sys[name] = figures{
			toRaw:     col(func(r measure.Result) float64 { return r.MBps / r.RawMBps }),
			mbps:      col(func(r measure.Result) float64 { return r.MBps }),
			rawMBps:   col(func(r measure.Result) float64 { return r.RawMBps }),
			cpu:       col(func(r measure.Result) float64 { return r.CPUPerMiB }),
			rawCPU:    col(func(r measure.Result) float64 { return r.RawCPUPerMiB }),
			p50:       measure.Quantile(joins, 0.5),
			p99:       measure.Quantile(joins, 0.99),
			peakHeap:  col(func(r measure.Result) float64 { return r.PeakHeapMiB }),
			afterHeap: col(func(r measure.Result) float64 { return r.AfterHeapMiB }),
			idleHeap:  col(func(r measure.Result) float64 { return r.IdleHeapMiB }),
		}
	}
	w, t := results["wiremesh"], results["tsnet"]
	for i := range min(len(w), len(t)) {
		s.perRound = append(s.perRound, figures{
			toRaw: (w[i].MBps / w[i].RawMBps) / (t[i].MBps / t[i].RawMBps),
			cpu:   t[i].CPUPerMiB / w[i].CPUPerMiB,
		})
	}
	return s
}

// row is one line of the table: how to read a figure and whether more is
// better.
type row struct {
	label  string
	get    func(figures) float64
	format string
	higher bool // more is better; the ratio column reads "× more/faster" or "× less"
}

var rows = []row{
	{"throughput / raw loopback TCP", func(f figures) float64 { return f.toRaw }, "%.3f", true},
	{"throughput, MB/s", func(f figures) float64 { return f.mbps }, "%.0f", true},
	{"  raw loopback TCP, MB/s", func(f figures) float64 { return f.rawMBps }, "%.0f", true},
	{"CPU per MiB, ms (user+sys)", func(f figures) float64 { return f.cpu }, "%.2f", false},
	{"  raw loopback TCP, ms/MiB", func(f figures) float64 { return f.rawCPU }, "%.2f", false},
	{"join → first echoed byte p50, ms", func(f figures) float64 { return f.p50 }, "%.1f", false},
	{"join → first echoed byte p99, ms", func(f figures) float64 { return f.p99 }, "%.1f", false},
	{"peak heap during transfer, MiB/member", func(f figures) float64 { return f.peakHeap }, "%.1f", false},
	{"heap after transfer, MiB/member", func(f figures) float64 { return f.afterHeap }, "%.1f", false},
	{"idle heap, MiB/member", func(f figures) float64 { return f.idleHeap }, "%.2f", false},
}

// table prints the medians and, when both systems ran, the ratio in
// wiremesh's favour (>1: wiremesh is better by that factor).
func (s summary) table(w io.Writer) {
	wm, wok := s.sys["wiremesh"]
	ts, tok := s.sys["tsnet"]
	fmt.Fprintf(w, "%-40s %10s %10s %s\n", "median over rounds", "wiremesh", "tsnet", "wiremesh's advantage")
	for _, r := range rows {
		cell := func(f figures, ok bool) string {
			if !ok {
				return "-"
			}
			return fmt.Sprintf(r.format, r.get(f))
		}
		adv := ""
		if wok && tok && r.get(wm) != 0 && r.get(ts) != 0 {
			x := r.get(wm) / r.get(ts)
			if !r.higher {
				x = 1 / x
			}
			adv = fmt.Sprintf("%.2f×", x)
		}
		fmt.Fprintf(w, "%-40s %10s %10s %s\n", r.label, cell(wm, wok), cell(ts, tok), adv)
	}
	if len(s.perRound) > 0 {
		var rate, cpu []float64
		for _, f := range s.perRound {
			rate, cpu = append(rate, f.toRaw), append(cpu, f.cpu)
		}
		fmt.Fprintf(w, "\nper round (wiremesh child vs the tsnet child right after it):\n")
		fmt.Fprintf(w, "  throughput/raw, wiremesh ÷ tsnet: %s, median %.2f×\n", fmtList(rate), measure.Median(rate))
		fmt.Fprintf(w, "  CPU per MiB, tsnet ÷ wiremesh:    %s, median %.2f×\n", fmtList(cpu), measure.Median(cpu))
	}
}

func fmtList(xs []float64) string {
	s := slices.Clone(xs)
	out := "("
	for i, x := range s {
		if i > 0 {
			out += ", "
		}
		out += fmt.Sprintf("%.2f", x)
	}
	return out + ")"
}

// report prints the per-round figures and the medians with their ratios.
func report(w io.Writer, results map[string][]measure.Result, cfg measure.Config) {
	s := summarize(results)
	fmt.Fprintf(w, "%d round(s); transfers of %v (128 KiB writes); %d joins per child; idle mesh of %d\n\n",
		s.rounds, cfg.Duration, cfg.Joins, cfg.Idle)
	for _, name := range []string{"wiremesh", "tsnet"} {
		for i, r := range results[name] {
			fmt.Fprintf(w, "round %d %-8s %6.1f MB/s = %.3f× raw (%.0f MB/s); cpu %.2f ms/MiB (raw %.2f); heap/member peak %.1f, after %.1f MiB; first byte p50 %.1f ms; idle %.2f MiB/member\n",
				i+1, name, r.MBps, r.MBps/r.RawMBps, r.RawMBps, r.CPUPerMiB, r.RawCPUPerMiB,
				r.PeakHeapMiB, r.AfterHeapMiB, measure.Median(r.FirstByteMs), r.IdleHeapMiB)
		}
	}
	fmt.Fprintln(w)
	s.table(w)
}
