"""``lockd`` with public mode's limiter taken out: the baseline bench/public.py measures the
limiter's cost against (``python -m bench.unlimited serve ...``, the arguments of ``lockd``).

Never for serving: every check of lockd.ratelimit.Limits lets the request through without
counting it.
"""

from __future__ import annotations

from lockd import ratelimit
from lockd.cli import main


async def _allow(self: ratelimit.Limits, *args: object) -> None:
    return None


ratelimit.Limits._hit = _allow  # type: ignore[method-assign]

if __name__ == "__main__":
    raise SystemExit(main())
