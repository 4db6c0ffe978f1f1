package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
)

// printTable writes the human-readable report.
func printTable(out io.Writer, r *Report) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	row := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s\t%s\n", k, fmt.Sprintf(format, args...)) }
	c := r.Config
	row("scenario", "%s", r.Scenario)
	row("target", "%s", strings.Join(c.Addrs, ","))
	if len(c.RecvAddrs) > 0 {
		row("recipients' target", "%s", strings.Join(c.RecvAddrs, ","))
	}
	if len(c.ReconnectAddrs) > 0 {
		row("reconnect target", "%s", strings.Join(c.ReconnectAddrs, ","))
	}
	row("server assumed", "%s", r.ServerAssumed)
	row("user creation", "%s", r.UserCreation)
	row("users / procs / source IPs", "%d / %d / %d (open-file limit %d)", r.Users, c.Procs, c.SourceIPs, r.FileLimit)
	if r.UsersReused > 0 {
		row("users reused", "%d of %d existed (-prefix of an earlier run), with their history", r.UsersReused, r.Users)
	}
	switch {
	case r.SignupSeconds > 0 && r.UsersReused == r.Users:
		row("user creation took", "%.2fs (none created)", r.SignupSeconds)
	case r.SignupSeconds > 0:
		row("user creation took", "%.2fs (%.0f users/s)", r.SignupSeconds, r.SignupPerSec)
	}
	if r.LoginSeconds > 0 {
		row("connect+login took", "%.2fs (%.0f users/s)", r.LoginSeconds, float64(r.Users)/r.LoginSeconds)
	}
	if r.GroupSeconds > 0 {
		row("group setup", "%.2fs", r.GroupSeconds)
	}
	if len(r.Nodes) > 0 {
		var nodes []string
		for _, n := range slices.Sorted(maps.Keys(r.Nodes)) {
			nodes = append(nodes, fmt.Sprintf("%s %d", n, r.Nodes[n]))
		}
		row("users per node (LOGIN_ACK)", "%s", strings.Join(nodes, ", "))
	}
	if r.Pairs > 0 {
		cross := ""
		if len(r.Nodes) > 0 {
			cross = fmt.Sprintf(", %d of them across nodes", r.CrossPairs)
		}
		row("sender-recipient pairs", "%d%s", r.Pairs, cross)
	}
	if t := r.Traffic; t != nil {
		rate := "flat out"
		if t.TargetRate > 0 {
			rate = fmt.Sprintf("%.0f msg/s", t.TargetRate)
		}
		row("load", "%s, %d in flight per sender, %d-byte messages, fan-out %d, window %.0fs after %v warm-up",
			rate, c.Inflight, c.Size, t.Fanout, t.WindowSeconds, c.Warmup)
		row("sent/s", "%.0f", t.SentPerSec)
		row("acked/s", "%.0f", t.AckedPerSec)
		row("delivered/s", "%.0f", t.DeliveredPerSec)
		// Paced, latencies run from the time a message was due.
		from := "send"
		if t.TargetRate > 0 {
			from = "due"
		}
		row("latency ("+from+"->delivery)", "%s", latLine(t.Latency))
		row("ack latency ("+from+"->ACK)", "%s", latLine(t.AckLatency))
		if t.SendLag != nil {
			row("send lag (due->sent)", "%s", latLine(*t.SendLag))
		}
		if len(t.Seconds) > 0 {
			row("latency per second", "%s", secondsLine(t.Seconds))
		}
		row("totals", "sent %d (send errors %d, due but never sent %d), acked %d, ack errors %d (rate limited %d), unanswered %d, delivered %d of %d expected",
			t.Sent, t.SendErrors, t.DueUnsent, t.Acked, t.AckErrors, t.RateLimited, t.Unanswered, t.Delivered, t.Expected)
		row("lost / extra / duplicates", "%d / %d / %d (per message; connections lost %d, drain %.2fs)",
			t.Lost, t.Extra, t.Duplicates, t.ConnLost, t.DrainSeconds)
		row("seq gaps / seq dups", "%d / %d, reorders %d (foreign %d)",
			t.SeqGaps, t.SeqDups, t.SeqReorders, t.Foreign)
		if t.Stale > 0 {
			row("an earlier run's messages", "%d delivered to reused users, not counted", t.Stale)
		}
		if t.GSeqDeliveries > 0 || t.OwnGSeqs > 0 {
			row("group log (gseq) checks", "%d deliveries, %d own messages from ACKs", t.GSeqDeliveries, t.OwnGSeqs)
		}
	}
	connRows := func(name string, cr *ConnectReport) {
		row(name+" connections", "%d connected, %d failed, %d dropped while held; connect %.2fs, hold %.1fs",
			cr.Connected, cr.Failed, cr.Dropped, cr.ConnectSeconds, cr.HoldSeconds)
		row(name+" server RSS", "before %s, after connect %s, end %s, peak %s",
			mib(cr.RSSBefore), mib(cr.RSSAfterConnect), mib(cr.RSSEnd), mib(cr.RSSPeak))
		row(name+" RSS per connection", "%.0f bytes (%.2f KiB)", cr.BytesPerConn, cr.BytesPerConn/1024)
	}
	if r.Connect != nil {
		name := "chatserver"
		if c.Baseline {
			name = "baseline"
		}
		connRows(name, r.Connect)
	}
	if r.Baseline != nil {
		connRows("baseline", r.Baseline)
		row("ratio to baseline", "%.3f", r.RatioToBaseline)
	}
	if l := r.Login; l != nil {
		if l.Killed > 0 {
			row("killed node", "pid %d", l.Killed)
		}
		row("reconnecting users", "%d: %d back, %d failed, %d retries", l.Reconnecting, l.Back, l.Failed, l.Retries)
		row("all back after", "%.3fs", l.AllBackSeconds)
		row("reconnect latency", "%s", latLine(l.Latency))
	}
	res := r.Resources
	for _, s := range res.Servers {
		row(fmt.Sprintf("server pid %d (%s)", s.PID, s.Name), "cpu %.0f%%, rss %s -> %s", s.CPUPercent, mib(s.RSSStart), mib(s.RSSEnd))
	}
	row("cpu (100% = 1 core)", "servers %.0f%%, chatbench %.0f%%, other processes %.0f%%; machine %.0f%% busy of %d cores (over %.1fs)",
		res.ServerCPUPercent, res.BenchCPUPercent, res.OtherCPUPercent, res.MachineBusyPct, res.MachineCPUs, res.WindowSeconds)
	if rb := r.Redis; rb != nil {
		row("redis baseline", "%.0f PUBLISH/s (%s)", rb.PublishPerSec, rb.Command)
	}
	if rb := r.Relay; rb != nil && rb.Traffic != nil {
		t, res := rb.Traffic, rb.Resources
		row("relay baseline", "delivered/s %.0f (sent/s %.0f); lost %d, extra %d, duplicates %d, ack errors %d, unanswered %d",
			t.DeliveredPerSec, t.SentPerSec, t.Lost, t.Extra, t.Duplicates, t.AckErrors, t.Unanswered)
		row("relay latency", "%s", latLine(t.Latency))
		if t.SendLag != nil {
			row("relay send lag", "%s", latLine(*t.SendLag))
		}
		if len(t.Seconds) > 0 {
			row("relay latency per second", "%s", secondsLine(t.Seconds))
		}
		row("relay cpu", "relay %.0f%%, chatbench %.0f%%, other processes %.0f%%; machine %.0f%% busy",
			res.ServerCPUPercent, res.BenchCPUPercent, res.OtherCPUPercent, res.MachineBusyPct)
		row("ratio to relay", "delivered/s %.3f, p99 %.2f", rb.DeliveredRatio, rb.P99Ratio)
		for _, e := range rb.Errors {
			row("relay error", "%s", e)
		}
	}
	for _, e := range r.Errors {
		row("error", "%s", e)
	}
	verdict := "OK"
	if !r.OK {
		verdict = "FAILED (loss, duplicates, unanswered sends, errors or failures above)"
	}
	row("result", "%s", verdict)
	_ = tw.Flush()
}

// secondsLine sums up the p99 and max of each second. Seconds with fewer
// than half the median count of latencies (the ends of the window) are
// left out.
func secondsLine(ss []SecondStats) string {
	counts := make([]int64, len(ss))
	for i, s := range ss {
		counts[i] = s.Latencies
	}
	slices.Sort(counts)
	var p99 []float64
	top := 0.0
	for _, s := range ss {
		if 2*s.Latencies >= counts[len(counts)/2] {
			p99 = append(p99, s.P99)
			top = max(top, s.Max)
		}
	}
	slices.Sort(p99)
	return fmt.Sprintf("p99 lowest %.1fms, median %.1fms, highest %.1fms; highest max %.1fms (%d s)",
		p99[0], p99[len(p99)/2], p99[len(p99)-1], top, len(p99))
}

func latLine(l LatencySummary) string {
	if l.Count == 0 {
		return "no samples"
	}
	return fmt.Sprintf("p50 %.3fms  p90 %.3fms  p99 %.3fms  p99.9 %.3fms  max %.3fms  (mean %.3fms, n=%d)",
		l.P50, l.P90, l.P99, l.P999, l.Max, l.Mean, l.Count)
}
