#!/bin/bash
# `git bisect run` step for issue #15: the boot ramp (bench/boot_ramp.py) against the lockd of
# the checkout in the current directory; bad when steady-state's p99 passes $THRESHOLD_MS.
# Run from a worktree outside the repository, with the harness and venv of a recent checkout:
#   git -C /tmp/bisect-run bisect start main 2944997
#   git -C /tmp/bisect-run bisect run /work/wt-bisect/bench/bisect_ramp.sh
set -u
HARNESS=${HARNESS:-$(cd "$(dirname "$0")/.." && pwd)}
THRESHOLD_MS=${THRESHOLD_MS:-2900}
TREE=$(pwd)
# Newer checkouts install backends/ as lockd.backends; run from the tree, that import must
# find this tree's backends/, not the harness venv's editable install.
if [ -d "$TREE/backends" ] && [ ! -e "$TREE/lockd/backends" ]; then
  ln -s ../backends "$TREE/lockd/backends"
fi
out=$(cd "$HARNESS" && taskset -c 1 .venv/bin/python -m bench.boot_ramp --lockd-tree "$TREE" \
  --nodes "${NODES:-5000}" --rate 1000) || exit 125
p99=$(printf '%s' "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["steady-state"]["p99"])')
echo "$(git rev-parse --short HEAD) steady-state p99 ${p99} ms, load $(cut -d' ' -f1 /proc/loadavg): $out" \
  >> "${BISECT_LOG:-/tmp/bisect-ramp.log}"
python3 -c "import sys; sys.exit(0 if $p99 <= $THRESHOLD_MS else 1)"
