"""Reading a backend URL's options (its query string), one way for every backend.

Hand-written rather than a library: the standard library parses the query, and what is left
is a few typed reads whose errors must name the scheme, the option and the value, which is
what a user needs to fix a URL.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs

from .base import InvalidBackendURL

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


class Options:
    """The options of one URL. Each read takes an option out; :meth:`finish` refuses the
    rest, so a misspelt option is an error and never silently ignored."""

    def __init__(self, scheme: str, query: str) -> None:
        self.scheme = scheme
        # The last of repeated options wins, as in most URL parsers.
        self._left = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}

    def _error(self, name: str, value: str, want: str) -> InvalidBackendURL:
        return InvalidBackendURL(f"{self.scheme} URL option {name}={value!r}: {want}")

    def text(self, name: str, default: str = "") -> str:
        return self._left.pop(name, default)

    def has(self, name: str) -> bool:
        return name in self._left

    def seconds(self, name: str, default: float) -> float:
        raw = self._left.pop(name, None)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not 0 < value < float("inf"):
            raise self._error(name, raw, "seconds, a number greater than 0")
        return value

    def whole(self, name: str, default: int | None, minimum: int = 0) -> int | None:
        raw = self._left.pop(name, None)
        if raw is None:
            return default
        if not raw.strip().isdigit() or int(raw) < minimum:
            raise self._error(name, raw, f"a whole number >= {minimum}")
        return int(raw)

    def flag(self, name: str, default: bool | None = None) -> bool | None:
        raw = self._left.pop(name, None)
        if raw is None:
            return default
        if raw.lower() in TRUE:
            return True
        if raw.lower() in FALSE:
            return False
        raise self._error(name, raw, "true or false")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        raw = self._left.pop(name, None)
        if raw is None:
            return default
        if raw.lower() not in choices:
            raise self._error(name, raw, f"one of {', '.join(choices)}")
        return raw.lower()

    def file(self, name: str) -> str | None:
        """A path that must name an existing file (certificates, keys)."""
        raw = self._left.pop(name, "")
        if not raw:
            return None
        path = os.path.expanduser(raw)
        if not os.path.isfile(path):
            raise self._error(name, raw, "no such file")
        return path

    def finish(self) -> None:
        if self._left:
            raise InvalidBackendURL(
                f"{self.scheme} URL has unknown options: {', '.join(sorted(self._left))}"
            )
