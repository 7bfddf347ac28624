"""The load test's report: figures over all calls (``build_report``), the text table
(``format_report``), the PNG plot (``write_plot``) and the progress line."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from telephony.testing.replay_result import CallResult, summarize

if TYPE_CHECKING:
    from telephony.testing.load_run import LoadConfig, Progress, Report


def build_report(config: LoadConfig, results: list[CallResult], *, elapsed: float,
                 wall_started: datetime.datetime) -> dict[str, Any]:
    turns = [t for r in results for t in r.turns]
    errors = [e for r in results for e in r.errors]

    def kind_count(prefix: str) -> int:
        return sum(e.startswith(prefix) for e in errors)

    underrun_calls = [r for r in results if r.underruns]
    error_counts = {
        "invalid_messages": sum(r.invalid_messages for r in results),
        "unexpected_closes": kind_count("unexpected_close"),
        "timeouts": kind_count("timeout"),
        "webhook_failures": kind_count("webhook_failed"),
        "connect_failures": kind_count("connect_failed"),
        "agent_failures": kind_count("agent_"),
        "turns_without_audio": kind_count("turn_without_audio"),
        "replay_errors": kind_count("replay_error"),
    }
    error_counts["total"] = (error_counts["invalid_messages"] + len(errors)
                             - kind_count("invalid_messages"))
    return {
        "tool": "voice-bridge loadtest",
        "started_at": wall_started.isoformat(timespec="seconds"),
        "config": {"url": config.url, "calls": config.calls, "ramp_up_s": config.ramp_up_s,
                   "duration_s": config.duration_s, "loop": config.loop,
                   "signed": bool(config.auth_token), "voice": config.voice, "preset": config.preset,
                   "recordings": [r.name for r in config.recordings]},
        "elapsed_s": round(elapsed, 2),
        "calls": {
            "planned": config.calls, "run": len(results),
            "completed": sum(r.status == "completed" for r in results),
            "cut": sum(r.status == "cut" for r in results),
            "failed": sum(r.status == "failed" for r in results),
            "peak_concurrent": _peak_concurrency(results),
        },
        "turns": {
            "total": len(turns),
            "with_audio": sum(t["outcome"] == "audio" for t in turns),
            "cleared_before_audio": sum(t["outcome"] == "cleared_before_audio" for t in turns),
            "without_audio": sum(t["outcome"] == "no_audio" for t in turns),
            "overlapped": sum(bool(t["overlapped"]) for t in turns),
        },
        "ttfa_ms": summarize(t["ttfa_ms"] for t in turns if t["ttfa_ms"] is not None),
        "ttfa_greeting_ms": summarize(t["ttfa_ms"] for t in turns
                                      if t["kind"] == "greeting" and t["ttfa_ms"] is not None),
        "ttfa_agent_ms": summarize(t["ttfa_ms"] for t in turns
                                   if t["kind"] == "agent" and t["ttfa_ms"] is not None),
        "underruns": {
            "count": sum(r.underruns for r in results),
            "total_ms": round(sum(r.underrun_ms for r in results), 1),
            "calls_with_underruns": len(underrun_calls),
            "utterances_heard": sum(r.utterances_heard for r in results),
        },
        "barge_in_ms": summarize(v for r in results for v in r.barge_in_ms),
        "clears": sum(r.clears for r in results),
        "mark_rtt_ms": summarize(v for r in results for v in r.mark_rtt_ms),
        "delivery_rtf": summarize((v for r in results for v in r.delivery_rtf), 3),
        "audio_s": round(sum(r.audio_s for r in results), 1),
        "frames_received": sum(r.frames_received for r in results),
        "errors": {**error_counts, "examples": errors[:20]},
        "per_call": [r.as_dict() for r in results],
    }


def _peak_concurrency(results: list[CallResult]) -> int:
    edges = sorted([(r.started_at_s, 1) for r in results]
                   + [(r.started_at_s + r.duration_s, -1) for r in results])
    peak = current = 0
    for _, delta in edges:
        current += delta
        peak = max(peak, current)
    return peak


def timeseries(results: list[CallResult], samples: list[dict[str, Any]],
                elapsed: float) -> dict[str, list[Any]]:
    seconds = max(1, int(elapsed) + 1)
    underrun_ms = [0.0] * seconds
    for result in results:
        for t in result.underrun_times_s:
            underrun_ms[min(seconds - 1, max(0, int(t)))] += 20.0
    return {"t_s": list(range(seconds)), "underrun_ms": underrun_ms,
            "samples": samples}


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def format_report(report: Report, max_calls: int = 40) -> str:
    d = report.data
    lines = []
    calls = d["calls"]
    lines.append(f"voice-bridge load test: {calls['run']} calls ({calls['completed']} completed, "
                 f"{calls['cut']} cut, {calls['failed']} failed), peak {calls['peak_concurrent']} "
                 f"concurrent, {d['elapsed_s']:.1f} s, {d['audio_s']:.1f} s of audio heard")
    lines.append("")
    header = f"{'metric':<24}{'n':>6}{'p50':>9}{'p90':>9}{'p95':>9}{'p99':>9}{'max':>9}"
    lines.append(header)
    lines.append("-" * len(header))
    for label, key, digits in (("TTFA all turns (ms)", "ttfa_ms", 0),
                               ("TTFA greeting (ms)", "ttfa_greeting_ms", 0),
                               ("TTFA agent turns (ms)", "ttfa_agent_ms", 0),
                               ("barge-in -> clear (ms)", "barge_in_ms", 0),
                               ("mark round trip (ms)", "mark_rtt_ms", 0),
                               ("delivery RTF", "delivery_rtf", 3)):
        s = d[key]
        lines.append(f"{label:<24}{s['n']:>6}" + "".join(
            f"{_fmt(s[p], digits):>9}" for p in ("p50", "p90", "p95", "p99", "max")))
    lines.append("")
    u = d["underruns"]
    lines.append(f"underruns: {u['count']} ({u['total_ms']:.0f} ms of silence inside utterances) in "
                 f"{u['calls_with_underruns']} of {calls['run']} calls; clears: {d['clears']}")
    counters = d.get("bridge_counters")
    if counters is not None:
        bridge_errors = sum(v for k, v in counters.items() if k.startswith("errors_total"))
        lines.append(f"  the bridge's own count: {counters.get('underruns_total', 0):.0f} underruns "
                     f"({1000 * counters.get('underrun_seconds_total', 0):.0f} ms), "
                     f"{counters.get('barge_ins_total', 0):.0f} barge-ins, "
                     f"{bridge_errors:.0f} errors")
    t = d["turns"]
    lines.append(f"turns: {t['total']} ({t['with_audio']} with audio, {t['cleared_before_audio']} "
                 f"cleared before audio, {t['without_audio']} without audio, {t['overlapped']} sent "
                 "while the bridge was still speaking)")
    cpu = d.get("cpu", {})
    if cpu.get("server_cpu_s") is not None:
        lines.append(f"server CPU: {cpu['server_cpu_s']:.1f} s = {cpu['server_cpu_pct']:.0f}% of one "
                     f"core on average ({cpu['cores']} cores; pid {cpu['server_pid']} via "
                     f"{cpu['pid_source']}); {_fmt(cpu['server_cpu_s_per_audio_s'], 4)} CPU s per "
                     f"audio s; load generator {cpu['client_cpu_s']:.1f} CPU s"
                     + (" (same process)" if cpu.get("same_process") else ""))
    else:
        lines.append(f"server CPU: not measured ({cpu.get('pid_source', '-')}); load generator "
                     f"{cpu.get('client_cpu_s', 0):.1f} CPU s")
    if cpu.get("client_cpu_ms_per_call_s") is not None:
        lines.append(f"load generator ({cpu.get('generator', 'emulator')}): "
                     f"{cpu['client_cpu_ms_per_call_s']:.2f} ms CPU per call-second")
    lag = d.get("client_loop_lag_ms") or {}
    if lag.get("n"):
        lines.append(f"load generator event-loop lag: p99 {lag['p99']:.0f} ms, max {lag['max']:.0f} ms"
                     + ("  (high: the client itself may cause underruns)" if lag["p99"] > 20 else ""))
    e = d["errors"]
    lines.append("errors: " + (", ".join(f"{k}={v}" for k, v in e.items()
                                         if k not in ("examples", "total") and v)
                               or "none") + f" (total {e['total']})")
    for example in e["examples"][:5]:
        lines.append(f"  ! {example}")
    lines.append("")
    per_call = d["per_call"]
    if per_call:
        lines.append(f"{'call':<10}{'recording':<16}{'status':<10}{'turns':>6}{'ttfa p50':>9}"
                     f"{'ttfa max':>9}{'underr':>7}{'ms':>6}{'barge':>7}{'close':>7}{'errors':>7}")
        shown = per_call
        if len(per_call) > max_calls:
            def badness(c: dict[str, Any]) -> tuple[int, float, float]:
                worst = max([x["ttfa_ms"] or 0 for x in c["turns"]] or [0])
                return -len(c["errors"]), -c["underrun_ms"], -worst

            shown = sorted(per_call, key=badness)
            shown = sorted(shown[:max_calls], key=lambda c: c["call_id"])
            lines.append(f"(the {max_calls} worst of {len(per_call)} calls)")
        for c in shown:
            ttfas = [x["ttfa_ms"] for x in c["turns"] if x["ttfa_ms"] is not None]
            ttfas.sort()
            p50 = ttfas[len(ttfas) // 2] if ttfas else None
            barge = c["barge_in_ms"][0] if c["barge_in_ms"] else None
            worst = max(ttfas) if ttfas else None
            lines.append(f"{c['call_id']:<10}{c['recording'][:15]:<16}{c['status']:<10}"
                         f"{len(c['turns']):>6}{_fmt(p50, 0):>9}{_fmt(worst, 0):>9}"
                         f"{c['underruns']:>7}{c['underrun_ms']:>6.0f}{_fmt(barge, 0):>7}"
                         f"{_fmt(c['close_code']):>7}{len(c['errors']):>7}")
    return "\n".join(lines)


def write_plot(report: Report, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    d = report.data
    ttfa = np.array([t["ttfa_ms"] for c in d["per_call"] for t in c["turns"]
                     if t["ttfa_ms"] is not None])
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    fig.suptitle(f"voice-bridge load test: {d['calls']['run']} calls, peak "
                 f"{d['calls']['peak_concurrent']} concurrent, {d['underruns']['count']} underruns")
    ax = axes[0][0]
    if ttfa.size:
        ax.hist(ttfa, bins=min(40, max(5, ttfa.size // 2)), color="tab:blue")
        for p, style in ((50, "-"), (95, "--"), (99, ":")):
            ax.axvline(np.percentile(ttfa, p), color="k", linestyle=style, label=f"p{p}")
        ax.legend()
    ax.set_title("time to first audio per turn")
    ax.set_xlabel("ms")
    ax.set_ylabel("turns")
    ax = axes[0][1]
    if ttfa.size:
        xs = np.sort(ttfa)
        ax.plot(xs, np.arange(1, xs.size + 1) / xs.size, drawstyle="steps-post")
    ax.set_title("TTFA CDF")
    ax.set_xlabel("ms")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ts = d["timeseries"]
    ax = axes[1][0]
    ax.bar(ts["t_s"], ts["underrun_ms"], width=1.0, color="tab:red", label="underrun ms")
    ax.set_ylim(0, max(100.0, max(ts["underrun_ms"] or [0]) * 1.1))
    ax.set_title("underruns over time (bars) and active calls (line)")
    ax.set_xlabel("s since start")
    ax.set_ylabel("ms of silence inside utterances")
    samples = ts["samples"]
    if samples:
        twin = ax.twinx()
        twin.plot([s["t"] for s in samples], [s["active_calls"] for s in samples], color="tab:gray",
                  label="active calls")
        twin.set_ylabel("active calls")
    ax = axes[1][1]
    cpu = [(s["t"], s["server_cpu_pct"]) for s in samples if s.get("server_cpu_pct") is not None]
    if cpu:
        ax.plot([c[0] for c in cpu], [c[1] for c in cpu], color="tab:green")
        ax.axhline(100 * (d.get("cpu", {}).get("cores") or 1), color="k", linestyle=":",
                   label="all cores")
        ax.legend()
    ax.set_title("bridge CPU (% of one core)")
    ax.set_xlabel("s since start")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def progress_line(p: Progress) -> str:
    width = 24
    done = min(width, int(width * p.elapsed_s / max(1e-9, p.duration_s)))
    calls = min(width, int(width * p.finished / max(1, p.planned)))
    bar = "#" * calls + "-" * max(0, done - calls) + " " * (width - max(done, calls))
    return (f"\r[{bar}] {p.elapsed_s:6.1f}/{p.duration_s:.0f} s  calls {p.finished}/{p.planned} done, "
            f"{p.active} active  frames {p.frames}  underruns {p.underruns}  errors {p.errors}   ")
