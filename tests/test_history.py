"""The safety checker itself must catch violations, or every test built on it is hollow."""

from tests.history import Hold, max_overlap, violations


def test_disjoint_holds_are_safe() -> None:
    holds = [Hold("g", "a", 0, 1), Hold("g", "b", 1, 2), Hold("g", "c", 2.5, 3)]
    assert violations(holds, {"g": 1}) == []
    assert max_overlap(holds)["g"][0] == 1


def test_overlap_beyond_slots_is_caught() -> None:
    holds = [Hold("g", "a", 0, 2), Hold("g", "b", 1, 3), Hold("g", "c", 1.5, 1.6)]
    found = violations(holds, {"g": 2})
    assert len(found) == 1
    assert found[0].holders == ("a", "b", "c") and found[0].at == 1.5
    assert violations(holds, {"g": 3}) == []


def test_groups_are_checked_separately() -> None:
    holds = [Hold("x", "a", 0, 2), Hold("y", "b", 0, 2), Hold("y", "c", 1, 3)]
    assert [v.group for v in violations(holds, {"x": 1, "y": 1})] == ["y"]
