"""Group names and the configured slots of each group.

One definition of a valid group name, used by the FleetLock parser, the configuration, the
admin API and the CLI: ``[a-zA-Z0-9.-]+`` matched in full (a trailing newline is not part of
a name), at most :data:`MAX_GROUP_LENGTH` characters, and never ``.`` or ``..``, which the
etcd v2 keys API cleans out of a path and would make aliases of other groups.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from lockd.policy import GroupPolicy

GROUP_PATTERN = "[a-zA-Z0-9.-]+"
MAX_GROUP_LENGTH = 256
_GROUP_RE = re.compile(GROUP_PATTERN)
#: What a refused name is told, wherever it came from.
GROUP_RULE = (
    f"must match {GROUP_PATTERN} in full, be at most {MAX_GROUP_LENGTH} characters, "
    "and not be '.' or '..'"
)


def is_group_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and len(name) <= MAX_GROUP_LENGTH
        and _GROUP_RE.fullmatch(name) is not None
        and name not in (".", "..")
    )


@dataclass(frozen=True)
class GroupSettings:
    """How many slots each group has, and its reboot policy, from configuration.

    ``policy`` is what every group takes (``[lock]``); ``policies`` holds the complete
    policy of each group that sets any policy key of its own in ``[[lock.groups]]``.
    """

    default_slots: int = 1
    slots: Mapping[str, int] = field(default_factory=dict)
    strict: bool = False
    policy: GroupPolicy = field(default_factory=GroupPolicy)
    policies: Mapping[str, GroupPolicy] = field(default_factory=dict)

    def policy_for(self, group: str) -> GroupPolicy:
        return self.policies.get(group, self.policy)

    def slots_for(self, group: str) -> int | None:
        """Configured slots for ``group``; None if the group is unknown under strict_groups."""
        if group in self.slots:
            return self.slots[group]
        return None if self.strict else self.default_slots
