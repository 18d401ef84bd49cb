"""Summarise a storm from its record dir: drain, rates, latency, statuses, safety, plot.

``python -m bench.storm.report DIR`` re-reads a finished run (its ``params.json``, written
by ``bench.storm.run``, gives slots, times and the nodes for the polling-aware ideal; the
flags override it); ``bench.storm.run`` calls :func:`summarise` itself. The plot needs
matplotlib (bench venv); everything else is plain Python.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from bench.storm.ideal import simulate
from bench.storm.safety import (
    DEFAULT_UNDECIDED,
    Event,
    GroupVerdict,
    Hold,
    is_undecided,
    parse_undecided,
    split_holds,
    verdict,
)


class Record:
    """What the storm's locust processes wrote: events, nodes, counters, refused groups."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.nodes: dict[str, str] = {}
        self.statuses: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.refused: dict[str, dict[str, Any]] = {}
        self.answers: Counter[str] = Counter()

    def __iter__(self):  # (events, nodes, statuses, kinds), as load_record once returned
        return iter((self.events, self.nodes, self.statuses, self.kinds))


def load_record(directory: Path) -> Record:
    rec = Record()
    for path in sorted(directory.glob("record-*.jsonl")):
        with open(path) as fh:
            head = json.loads(fh.readline())
            rec.nodes.update(head["nodes"])
            rec.statuses.update(head["statuses"])
            rec.kinds.update(head["kinds"])
            rec.refused.update(head.get("refused", {}))
            rec.answers.update(head.get("answers", {}))
            for line in fh:
                t, node, group, what = json.loads(line)
                rec.events.append((t, node, group, what))
    rec.events.sort(key=lambda e: e[0])
    return rec


def polling_ideal(params: dict[str, Any], slots: int) -> dict[str, float | None] | None:
    """Per group, the drain of the same storm against a perfect server (bench/storm/ideal.py).

    None when ``params`` lack what the simulation needs (a record dir without params.json).
    """
    try:
        names = list(params["group_names"])
        sim = simulate(nodes=int(params["nodes"]), group_names=names, slots=slots,
                       period=float(params["scaled_period_s"]),
                       reboot=float(params["scaled_reboot_s"]),
                       seed=int(params.get("seed", 0)),
                       die_fraction=float(params.get("die_fraction", 0.0)),
                       spawn_rate=float(params.get("spawn_rate", 0.0)))
    except (KeyError, TypeError, ValueError):
        return None
    return sim.drains()


def drain(events: list[Event], nodes: dict[str, str], slots: int, reboot: float,
          polling: dict[str, float | None] | None = None) -> dict[str, Any]:
    """Per group, first grant to last release, against two ideals.

    ``ideal_s``: ceil(nodes / slots) x reboot, a slot handed over the instant it is freed
    (no FleetLock client can reach it: nodes poll). ``polling_ideal_s``: the simulated drain
    of the same nodes against a perfect server (``polling``, from :func:`polling_ideal`);
    the ratio to it measures the server, not the protocol.
    """
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
    ratios, polled, groups = [], [], {}
    for group, n in sorted(size.items()):
        ideal = math.ceil(n / slots) * reboot
        complete = done[group] == n and not dead[group] and group in first_grant
        took = (last_release[group] - first_grant[group]) if complete else None
        sim = polling.get(group) if polling else None
        groups[group] = {"nodes": n, "done": done[group], "dead": dead[group],
                         "ideal_s": ideal, "polling_ideal_s": sim, "drain_s": took}
        if took is not None and ideal > 0:
            ratios.append(took / ideal)
        if took is not None and sim:
            polled.append(took / sim)
    return {
        "groups": groups,
        "complete_groups": len(ratios),
        "incomplete_groups": len(size) - len(ratios),
        "ratio_median": statistics.median(ratios) if ratios else None,
        "ratio_max": max(ratios) if ratios else None,
        "polling_ratio_median": statistics.median(polled) if polled else None,
        "polling_ratio_max": max(polled) if polled else None,
        "polling_ideal_median_s": statistics.median(
            [v for v in polling.values() if v is not None] or [0.0]) if polling else None,
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

    t = line["t"]
    groups = sorted(line["holders"] | line["waiting"])
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(t) < 2 or not groups:
        # Nothing to draw (every request refused, or no node got that far): an empty
        # timeline that says so, rather than a traceback.
        fig, ax = plt.subplots(figsize=(10, 3), layout="constrained")
        ax.text(0.5, 0.5, "no holds recorded", ha="center", va="center", fontsize=14,
                transform=ax.transAxes)
        ax.set_xlabel("seconds since the first recorded event")
        ax.set_yticks([])
        ax.set_title(title)
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return
    fig, (ax_h, ax_w) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True, layout="constrained",
                                     gridspec_kw={"height_ratios": [3, 2]})
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
    ax_w.set_xlabel("seconds since the first recorded event")
    ax_h.set_title(title)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _verdict_of(verdicts: list[GroupVerdict], holds: int) -> dict[str, Any]:
    bad = [v for v in verdicts if not v.ok]
    return {
        "holds": holds,
        "max_holders": max((v.max_holders for v in verdicts), default=0),
        "violations": [
            {"group": v.group, "max_holders": v.max_holders, "slots": v.slots,
             "at": v.at, "holders": list(v.holders)} for v in bad
        ],
        # No hold proves nothing: say so rather than "SAFE".
        "verdict": "VIOLATED" if bad else ("SAFE" if holds else "NO DATA"),
    }


def uncertain_reasons(events: list[Event], uncertain: list[Hold],
                      undecided: frozenset[str]) -> dict[str, int]:
    """Why each uncertain hold is uncertain: the node's first undecided steady-state."""
    first: dict[str, str] = {}
    for _t, node, _group, what in events:
        if node not in first and is_undecided(what, undecided):
            first[node] = "no answer" if what == "unsure" else what.split(":", 2)[1]
    return dict(Counter(first[h.node] for h in uncertain if h.node in first))


def summarise(directory: Path, *, slots: int, reboot: float, params: dict[str, Any],
              png: Path | None = None,
              undecided: frozenset[str] = DEFAULT_UNDECIDED) -> dict[str, Any]:
    rec = load_record(directory)
    events, nodes = rec.events, rec.nodes
    stats_path = directory / "locust-stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    end = max([e[0] for e in events] + [stats.get("stopped", 0.0)])
    holds, uncertain = split_holds(events, end, undecided)
    certain = _verdict_of(verdict(holds, slots), len(holds))
    everything = _verdict_of(verdict(holds + uncertain, slots), len(holds) + len(uncertain))
    total = stats.get("entries", {}).get("total", {})
    elapsed = (stats.get("stopped", 0) - stats.get("started", 0)) or None
    done = sum(1 for e in events if e[3] == "done")
    dead = sum(1 for e in events if e[3] == "die")
    groups = params.get("group_names") or sorted(set(nodes.values()))
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
        "statuses": dict(sorted(rec.statuses.items())),
        "kinds": dict(sorted(rec.kinds.items())),
        "refused": dict(sorted(rec.refused.items())),
        "answers": dict(rec.answers.most_common()),
        "storm_groups": list(groups),
        "drain": drain(events, nodes, slots, reboot, polling_ideal(params, slots)),
        "safety": {
            "slots": slots,
            "undecided_kinds": sorted(undecided),
            # The verdict proper, on the certain holds only: no false positives.
            **certain,
            "certain_holds": len(holds),
            "uncertain_holds": len(uncertain),
            "uncertain_because": uncertain_reasons(events, uncertain, undecided),
            # The same with every uncertain hold counted as if certain: a violation only
            # here may be a release applied late rather than the server's fault.
            "with_uncertain": everything,
        },
    }
    if png is not None:
        note = f"; {len(uncertain)} uncertain holds not drawn" if uncertain else ""
        plot(timeline(events, holds, end), slots, png,
             f"{len(nodes)} nodes, {result['groups']} groups, {slots} slots each{note}")
        result["plot"] = str(png)
    return result


def refusal_advice(r: dict[str, Any]) -> list[str]:
    """What to configure on a server that refused the storm's groups."""
    refused = r.get("refused") or {}
    if not refused:
        return []
    slots = r["safety"]["slots"]
    said = ", ".join(f"{g} ({v['status']} {v['kind']})" for g, v in list(refused.items())[:5])
    more = f" and {len(refused) - 5} more" if len(refused) > 5 else ""
    groups = r.get("storm_groups") or sorted(refused)
    lines = [
        f"  REFUSED      the server refuses the storm's groups: {said}{more}.",
        f"               Configure all {len(groups)} of the storm's groups on the server "
        f"(slots = {slots} each), then run again with",
        "               the same names: --group-names " + ",".join(groups[:8])
        + (",..." if len(groups) > 8 else "") + " (or --group-prefix).",
        "               For airlock or lockd, in config.toml (all of them: groups.toml "
        "in the result dir):",
    ]
    pad = " " * 17
    for g in groups[:3]:
        lines += [f"{pad}[[lock.groups]]", f'{pad}name = "{g}"', f"{pad}slots = {slots}"]
    if len(groups) > 3:
        lines.append(f"                 ... one [[lock.groups]] per group, {len(groups)} in all")
    return lines


def render(r: dict[str, Any]) -> str:
    d, s, lat = r["drain"], r["safety"], r["latency_ms"]
    rps = f"{r['req_per_s']:.0f}" if r["req_per_s"] else "?"

    def ms(v: Any) -> str:
        return "?" if v is None else f"{v:.0f}"

    def x(v: Any) -> str:
        return "?" if v is None else f"{v:.2f}x"

    if d["complete_groups"] == 0:
        ratio = "n/a (no group drained)"
    else:
        ratio = (f"median {x(d['polling_ratio_median'])}, worst {x(d['polling_ratio_max'])} "
                 f"of the polling-aware ideal")
    ideal = max((g["ideal_s"] for g in d["groups"].values()), default=0)
    sim = d.get("polling_ideal_median_s")
    sim_text = "?" if sim is None else f"{sim:.2f}s"
    w = s["with_uncertain"]
    because = ", ".join(f"{k}: {v}" for k, v in sorted(s["uncertain_because"].items()))
    lines = [
        "storm summary",
        f"  nodes        {r['nodes']} in {r['groups']} groups; rebooted {r['rebooted']}, "
        f"died holding {r['dead']}; all rebooted: {'yes' if r['all_rebooted'] else 'NO'}",
        f"  drain        {ratio} ({d['complete_groups']} groups drained, "
        f"{d['incomplete_groups']} not)",
        f"               ideal per group: polling-aware (simulated) median {sim_text}; "
        f"ceil(nodes/slots) x reboot {ideal:.2f}s "
        f"(median {x(d['ratio_median'])}, worst {x(d['ratio_max'])} of it)",
        f"  wall         {r['wall_s'] or 0:.1f}s; storm (first ask to last event) "
        f"{r['storm_s'] or 0:.1f}s",
        f"  requests     {r['requests']} at {rps} req/s; latency p50 {ms(lat['p50_ms'])} ms, "
        f"p95 {ms(lat['p95_ms'])} ms, p99 {ms(lat['p99_ms'])} ms, max {ms(lat['max_ms'])} ms",
        "  statuses     " + (", ".join(f"{k}: {v}" for k, v in r["statuses"].items()) or "-"),
        "  kinds        " + (", ".join(f"{k}: {v}" for k, v in r["kinds"].items()) or "-"),
    ]
    for text, n in list(r.get("answers", {}).items())[:6]:
        lines.append(f"    {n:>7}  {text}")
    lines += refusal_advice(r)
    if s["verdict"] == "NO DATA":
        lines.append(f"  SAFETY       NO DATA: no holds recorded"
                     f"{'' if not s['uncertain_holds'] else ' as certain'}; "
                     f"{s['uncertain_holds']} uncertain")
    else:
        lines.append(
            f"  SAFETY       {s['verdict']}: at most {s['max_holders']} holders in one group "
            f"(slots {s['slots']}); {len(s['violations'])} violating groups; "
            f"{s['certain_holds']} holds checked, {s['uncertain_holds']} uncertain left out")
    for v in s["violations"][:5]:
        lines.append(f"    {v['group']}: {v['max_holders']} holders > {v['slots']}: "
                     + ", ".join(v["holders"][:6]))
    if w["verdict"] == "NO DATA":
        lines.append("  + uncertain  NO DATA: no holds, certain or uncertain")
        return "\n".join(lines)
    lines.append(
        f"  + uncertain  {w['verdict']}: at most {w['max_holders']} holders with the "
        f"{s['uncertain_holds']} uncertain holds counted too ({w['holds']} holds; "
        f"{len(w['violations'])} violating groups)"
        + (f"; uncertain after: {because}" if because else ""))
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("dir", type=Path)
    p.add_argument("--slots", type=int, help="default: from DIR/params.json")
    p.add_argument("--reboot", type=float, help="scaled reboot time, seconds "
                   "(default: from DIR/params.json)")
    p.add_argument("--png", type=Path)
    p.add_argument("--undecided-kinds", default=None,
                   help="answers that leave a release undecided (see bench/README.md); "
                   "default: from DIR/params.json, else " + ",".join(sorted(DEFAULT_UNDECIDED)))
    a = p.parse_args()
    params_path = a.dir / "params.json"
    params = json.loads(params_path.read_text()) if params_path.exists() else {}
    slots = a.slots if a.slots is not None else params.get("slots")
    reboot = a.reboot if a.reboot is not None else params.get("scaled_reboot_s")
    if slots is None or reboot is None:
        p.error(f"{params_path} is missing: give --slots and --reboot")
    kinds = a.undecided_kinds if a.undecided_kinds is not None else params.get(
        "undecided_kinds")
    undecided = (parse_undecided(kinds) if isinstance(kinds, str)
                 else frozenset(kinds) if kinds is not None else DEFAULT_UNDECIDED)
    r = summarise(a.dir, slots=slots, reboot=reboot, params=params, png=a.png,
                  undecided=undecided)
    print(render(r))
    return exit_status(r)


def exit_status(r: dict[str, Any]) -> int:
    """0 safe and complete, 1 violation, 3 incomplete, 4 the server refused the groups."""
    if r["safety"]["verdict"] == "VIOLATED":
        return 1
    if r.get("refused"):
        return 4
    return 0 if r["all_rebooted"] and r["safety"]["verdict"] == "SAFE" else 3


if __name__ == "__main__":
    raise SystemExit(main())
