"""Bar chart of a throughput JSON (``bench/out/throughput.json``); needs the bench venv.

    .venv-bench/bin/python -m bench.throughput_plot bench/out/throughput.json out.png
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use("Agg"): no display on servers

SCENARIOS = ("relock", "refuse", "cycle")


def main(src: Path, png: Path) -> None:
    doc = json.loads(src.read_text())
    targets = list(doc["samples"])
    fig, ax = plt.subplots(figsize=(9, 4.5), layout="constrained")
    width = 0.8 / len(SCENARIOS)
    for i, mode in enumerate(SCENARIOS):
        values = [statistics.median(s["rps"] for s in doc["samples"][t].get(mode, [{"rps": 0}]))
                  for t in targets]
        bars = ax.bar([x + i * width for x in range(len(targets))], values, width, label=mode)
        for t, bar in zip(targets, bars, strict=True):
            ratios = doc["ratios"].get(t, {}).get(mode)
            if ratios:
                ax.annotate(f"{statistics.median(ratios):.2f}", (bar.get_x() + width / 2,
                            bar.get_height()), ha="center", va="bottom", fontsize="x-small")
    ax.set_xticks([x + width for x in range(len(targets))], targets)
    ax.set_ylabel("requests/s (median)")
    ax.set_title(f"lockd hot paths vs a bare aiohttp handler (labels: x bare), "
                 f"{doc['runs']} runs, wrk -c{doc['connections']}")
    ax.legend()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
