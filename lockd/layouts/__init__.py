"""Layouts: how a group's semaphore is named and encoded on a store.

A backend stores bytes under keys; a layout decides which key holds a group and what the
bytes say. lockd's own layout works on every backend; the other two are other programs'
formats, so that lockd can share a store with them.
"""

from __future__ import annotations

from lockd.layouts.airlock import AirlockLayout
from lockd.layouts.base import Layout, LayoutError
from lockd.layouts.locksmith import LocksmithLayout
from lockd.layouts.native import NativeLayout

__all__ = ["LAYOUTS", "AirlockLayout", "Layout", "LayoutError", "LocksmithLayout",
           "NativeLayout"]

#: name -> layout class, as ``?layout=NAME`` in a store URL names them.
LAYOUTS: dict[str, type[Layout]] = {
    "native": NativeLayout,
    "airlock": AirlockLayout,
    "locksmith": LocksmithLayout,
}
