"""The stable-id rule, on hand-made partitions."""

from __future__ import annotations

from services.communities.identities import FIRST_COMMUNITY_ID, match_community_ids


def labels_of(groups: dict[int, str]) -> dict[str, int]:
    """{label: 'abc'} -> {'a': label, 'b': label, 'c': label}."""
    return {key: label for label, keys in groups.items() for key in keys}


def test_first_run_numbers_communities_largest_first() -> None:
    match = match_community_ids({}, labels_of({7: "ab", 3: "cdef", 9: "g"}), FIRST_COMMUNITY_ID)
    assert match.ids == {3: 1, 7: 2, 9: 3}
    assert (match.inherited, match.fresh, match.next_community_id) == (0, 3, 4)
    assert (match.images_kept, match.images_before) == (0, 0)


def test_unchanged_partition_keeps_every_id_whatever_the_labels() -> None:
    previous = {"a": 5, "b": 5, "c": 8, "d": 8}
    match = match_community_ids(previous, labels_of({0: "cd", 1: "ab"}), 9)
    assert match.ids == {0: 8, 1: 5}
    assert (match.images_kept, match.images_before, match.next_community_id) == (4, 4, 9)


def test_split_keeps_the_id_on_the_larger_overlap() -> None:
    previous = dict.fromkeys("abcdef", 4)
    match = match_community_ids(previous, labels_of({0: "ab", 1: "cdef"}), 5)
    assert match.ids == {1: 4, 0: 5}
    assert match.images_kept == 4


def test_merge_keeps_the_majority_id_and_retires_the_other() -> None:
    previous = {"a": 1, "b": 1, "c": 1, "d": 2}
    match = match_community_ids(previous, labels_of({0: "abcd"}), 3)
    assert match.ids == {0: 1}
    assert match.next_community_id == 3


def test_no_majority_means_a_fresh_id_never_used_before() -> None:
    # Half from 1, half from 2: neither holds a strict majority.
    previous = {"a": 1, "b": 1, "c": 2, "d": 2}
    match = match_community_ids(previous, labels_of({0: "abcd"}), 10)
    assert match.ids == {0: 10}
    assert match.next_community_id == 11
    # Fresh ids also stay above every id still in use, whatever the counter says.
    assert match_community_ids({"a": 40}, labels_of({0: "b"}), 3).ids == {0: 41}


def test_new_images_do_not_count_toward_the_majority() -> None:
    previous = {"a": 1, "b": 2}
    match = match_community_ids(previous, labels_of({0: "axyz", 1: "b"}), 3)
    assert match.ids == {0: 1, 1: 2}
    assert (match.images_kept, match.images_before) == (2, 2)
