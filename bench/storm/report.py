"""Summarise a storm from its record dir: drain, rates, latency, statuses, safety, plot.

``python -m bench.storm.report DIR --slots N --reboot SECONDS`` re-reads a finished run;
``bench.storm.run`` calls :func:`summarise` itself. The plot needs matplotlib (bench venv);
everything else is plain Python.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from bench.storm.safety import Event, Hold, split_holds, verdict


def load_record(directory: Path) -> tuple[list[Event], dict[str, str], Counter, Counter]:
    events: list[Event] = []
    nodes: dict[str, str] = {}
    statuses: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for path in sorted(directory.glob("record-*.jsonl")):
        with open(path) as fh:
            head = json.loads(fh.readline())
            nodes.update(head["nodes"])
            statuses.update(head["statuses"])
            kinds.update(head["kinds"])
            for line in fh:
                t, node, group, what = json.loads(line)
                events.append((t, node, group, what))
    events.sort(key=lambda e: e[0])
    return events, nodes, statuses, kinds


def drain(events: list[Event], nodes: dict[str, str], slots: int,
          reboot: float) -> dict[str, Any]:
    """Per group, first grant to last release against ceil(nodes/slots) x reboot time."""
    size = Counter(nodes.values())
    first_grant: dict[str, float] = {}
    last_release: dict[str, float] = {}
    done: Counter[str] = Counter()
    dead: Counter[str] = Counter()
    for t, _node, group, what in events:
        if what == "grant":
            first_grant.setdefault(group, t)
        elif what == "release":
            last_release[group] = t
        elif what == "done":
            done[group] += 1
        elif what == "die":
            dead[group] += 1
    ratios, groups = [], {}
    for group, n in sorted(size.items()):
        ideal = math.ceil(n / slots) * reboot
        complete = done[group] == n and not dead[group]
        took = (last_release[group] - first_grant[group]) if complete else None
        groups[group] = {"nodes": n, "done": done[group], "dead": dead[group],
                         "ideal_s": ideal, "drain_s": took}
        if took is not None and ideal > 0:
            ratios.append(took / ideal)
    return {
        "groups": groups,
        "complete_groups": len(ratios),
        "incomplete_groups": len(size) - len(ratios),
        "ratio_median": statistics.median(ratios) if ratios else None,
        "ratio_max": max(ratios) if ratios else None,
    }


def timeline(events: list[Event], holds: list[Hold], end: float,
             bins: int = 400) -> dict[str, Any]:
    """Holders (from the holds the verdict judged) and waiting nodes per group over time."""
    if not events:
        return {"t": [], "holders": {}, "waiting": {}}
    t0 = events[0][0]
    span = max(end - t0, 1e-6)
    ts = [t0 + span * i / (bins - 1) for i in range(bins)]
    delta_h: dict[str, list[int]] = defaultdict(lambda: [0] * (bins + 1))
    delta_w: dict[str, list[int]] = defaultdict(lambda: [0] * (bins + 1))

    def index(t: float) -> int:
        return min(bins, max(0, math.ceil((t - t0) / span * (bins - 1))))

    asked: set[str] = set()
    for t, node, group, what in events:
        if what == "ask":
            asked.add(node)
            delta_w[group][index(t)] += 1
        elif what == "grant" and node in asked:
            asked.discard(node)
            delta_w[group][index(t)] -= 1
    for h in holds:
        delta_h[h.group][index(h.start)] += 1
        delta_h[h.group][index(h.end)] -= 1

    def integrate(deltas: dict[str, list[int]]) -> dict[str, list[int]]:
        out = {}
        for group, d in deltas.items():
            acc, series = 0, []
            for i in range(bins):
                acc += d[i]
                series.append(acc)
            out[group] = series
        return out

    return {"t": [t - t0 for t in ts], "holders": integrate(delta_h),
            "waiting": integrate(delta_w)}


def plot(line: dict[str, Any], slots: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_h, ax_w) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True, layout="constrained",
                                     gridspec_kw={"height_ratios": [3, 2]})
    t = line["t"]
    groups = sorted(line["holders"] | line["waiting"])
    zeros = [0] * len(t)
    # One row per group, so a thousand lines never hide each other; above slots is red.
    grid = [line["holders"].get(g, zeros) for g in groups]
    cmap = matplotlib.colors.ListedColormap(
        ["white"] + [plt.cm.Blues(0.35 + 0.6 * i / max(1, slots - 1)) for i in range(slots)]
        + ["red"])
    norm = matplotlib.colors.BoundaryNorm([x - 0.5 for x in range(slots + 3)], cmap.N)
    edges = [*t, t[-1] + (t[-1] - t[-2] if len(t) > 1 else 1.0)]
    img = ax_h.pcolormesh(edges, [i - 0.5 for i in range(len(groups) + 1)], grid, cmap=cmap,
                          norm=norm)
    ax_h.invert_yaxis()
    fig.colorbar(img, ax=[ax_h, ax_w], ticks=range(slots + 2), label="holders (red: > slots)")
    ax_h.set_ylabel(f"group (of {len(groups)})")
    if len(groups) <= 10:
        for g in groups:
            ax_w.step(t, line["waiting"].get(g, zeros), where="post", label=g)
        ax_w.legend(fontsize="x-small", ncol=5, loc="upper right")
    else:
        waits = list(zip(*(line["waiting"].get(g, zeros) for g in groups), strict=True))
        ax_w.step(t, [sum(c) for c in waits], where="post", label=f"all {len(groups)} groups")
        ax_w.step(t, [max(c) for c in waits], where="post", label="largest group")
        ax_w.legend(fontsize="small")
    ax_w.set_ylabel("waiting nodes")
    ax_w.set_xlabel("seconds since the first node asked")
    ax_h.set_title(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def summarise(directory: Path, *, slots: int, reboot: float, params: dict[str, Any],
              png: Path | None = None) -> dict[str, Any]:
    events, nodes, statuses, kinds = load_record(directory)
    stats_path = directory / "locust-stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    end = max([e[0] for e in events] + [stats.get("stopped", 0.0)])
    holds, uncertain = split_holds(events, end)
    verdicts = verdict(holds, slots)
    bad = [v for v in verdicts if not v.ok]
    total = stats.get("entries", {}).get("total", {})
    elapsed = (stats.get("stopped", 0) - stats.get("started", 0)) or None
    done = sum(1 for e in events if e[3] == "done")
    dead = sum(1 for e in events if e[3] == "die")
    result = {
        "params": params,
        "nodes": len(nodes),
        "groups": len(set(nodes.values())),
        "rebooted": done,
        "dead": dead,
        "all_rebooted": done + dead == len(nodes) and len(nodes) > 0,
        "wall_s": elapsed,
        "storm_s": (max(e[0] for e in events) - events[0][0]) if events else None,
        "requests": total.get("requests", 0),
        "req_per_s": (total.get("requests", 0) / elapsed) if elapsed else None,
        "latency_ms": {k: total.get(k) for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")},
        "latency_by_op_ms": {
            name: {k: e.get(k) for k in ("requests", "p50_ms", "p95_ms", "p99_ms")}
            for name, e in stats.get("entries", {}).items() if name != "total"
        },
        "statuses": dict(sorted(statuses.items())),
        "kinds": dict(sorted(kinds.items())),
        "drain": drain(events, nodes, slots, reboot),
        "safety": {
            "slots": slots,
            "max_holders": max((v.max_holders for v in verdicts), default=0),
            "certain_holds": len(holds),
            "uncertain_holds": len(uncertain),
            "violations": [
                {"group": v.group, "max_holders": v.max_holders, "slots": v.slots,
                 "at": v.at, "holders": list(v.holders)} for v in bad
            ],
            # An empty record proves nothing: no nodes ran, so say so rather than "SAFE".
            "verdict": "VIOLATED" if bad else ("SAFE" if nodes else "NO DATA"),
        },
    }
    if png is not None and events:
        note = f"; {len(uncertain)} uncertain holds not drawn" if uncertain else ""
        plot(timeline(events, holds, end), slots, png,
             f"{len(nodes)} nodes, {result['groups']} groups, {slots} slots each{note}")
        result["plot"] = str(png)
    return result


def render(r: dict[str, Any]) -> str:
    d, s, lat = r["drain"], r["safety"], r["latency_ms"]
    rps = f"{r['req_per_s']:.0f}" if r["req_per_s"] else "?"

    def ms(v: Any) -> str:
        return "?" if v is None else f"{v:.0f}"

    ratio = ("n/a" if d["ratio_median"] is None else
             f"median {d['ratio_median']:.2f}x, worst {d['ratio_max']:.2f}x of ideal")
    ideal = max((g["ideal_s"] for g in d["groups"].values()), default=0)
    lines = [
        "storm summary",
        f"  nodes        {r['nodes']} in {r['groups']} groups; rebooted {r['rebooted']}, "
        f"died holding {r['dead']}; all rebooted: {'yes' if r['all_rebooted'] else 'NO'}",
        f"  drain        {ratio} ({d['complete_groups']} groups drained, "
        f"{d['incomplete_groups']} not); ideal per group {ideal:.2f}s",
        f"  wall         {r['wall_s'] or 0:.1f}s; storm (first ask to last event) "
        f"{r['storm_s'] or 0:.1f}s",
        f"  requests     {r['requests']} at {rps} req/s; latency p50 {ms(lat['p50_ms'])} ms, "
        f"p95 {ms(lat['p95_ms'])} ms, p99 {ms(lat['p99_ms'])} ms, max {ms(lat['max_ms'])} ms",
        "  statuses     " + ", ".join(f"{k}: {v}" for k, v in r["statuses"].items()),
        "  kinds        " + (", ".join(f"{k}: {v}" for k, v in r["kinds"].items()) or "-"),
        f"  SAFETY       {s['verdict']}: at most {s['max_holders']} holders in one group "
        f"(slots {s['slots']}); {len(s['violations'])} violating groups; "
        f"{s['certain_holds']} holds checked, {s['uncertain_holds']} uncertain left out",
    ]
    for v in s["violations"][:5]:
        lines.append(f"    {v['group']}: {v['max_holders']} holders > {v['slots']}: "
                     + ", ".join(v["holders"][:6]))
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("dir", type=Path)
    p.add_argument("--slots", type=int, required=True)
    p.add_argument("--reboot", type=float, required=True, help="scaled reboot time, seconds")
    p.add_argument("--png", type=Path)
    a = p.parse_args()
    r = summarise(a.dir, slots=a.slots, reboot=a.reboot, params={}, png=a.png)
    print(render(r))
    return 0 if r["safety"]["verdict"] == "SAFE" else 1


if __name__ == "__main__":
    raise SystemExit(main())
