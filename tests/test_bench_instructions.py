"""bench/instructions.py: instructions per request counted by callgrind, on real servers."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from bench import instructions
from bench.procs import find_binary


def test_the_dump_total_is_what_callgrind_says_it_collected(tmp_path: Path) -> None:
    run = subprocess.run(
        [*instructions.callgrind(tmp_path), "/bin/echo", "hello"],
        capture_output=True, text=True, check=True, timeout=120,
    )
    collected = int(re.search(r"Collected : (\d+)", run.stderr).group(1))  # type: ignore[union-attr]
    pid = int(re.search(r"==(\d+)==", run.stderr).group(1))  # type: ignore[union-attr]
    # Another pid whose number starts with this one's is not this one's.
    (tmp_path / f"callgrind.out.{pid}0.1").write_text("summary: 1\n")
    (found,) = instructions.dumps(tmp_path, pid)
    assert instructions.dumped_instructions(found) == collected > 0


def test_counts_the_bare_handler_and_lockd_under_wrk(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    find_binary("wrk", "wrk")
    out = tmp_path / "counts.json"
    assert instructions.main(["--backends", "memory", "--scenarios", "refuse", "--idle", "2",
                              "--duration", "2", "--warmup", "1", "--json", str(out),
                              "--flags", "--log-level warning"]) == 0
    counts = json.loads(out.read_text())
    bare, lockd = counts["bare"]["refuse"], counts["memory"]["refuse"]
    for c in (bare, lockd):
        assert c["requests"] > 0 and c["errors"] == 0 and c["expected"]
        assert c["per_request_raw"] == round(c["instructions"] / c["requests"])
        # The work done by the clock, at the idle rate over the seconds counted.
        assert c["idle_per_s"] >= 0 and 2 <= c["counted_s"] < 60
        assert c["per_request"] == round(
            (c["instructions"] - c["idle_per_s"] * c["counted_s"]) / c["requests"])
        assert 0 < c["per_request"] <= c["per_request_raw"]
    assert lockd["non2xx"] == lockd["requests"]  # every one a 423: the slot is taken
    # lockd parses and answers as the bare handler does, and decides too: it does more.
    assert lockd["per_request"] > bare["per_request"]
    text = capsys.readouterr().out
    assert "| bare |" in text and "| memory |" in text and "(0." in text
    assert "unexpected statuses" not in text
    assert "memory: lockd serve with --no-admin --default-slots 1 --log-level warning" in text
