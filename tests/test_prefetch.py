"""stages/train/prefetch.py: items prepared one ahead in a background thread, in order, errors in place."""

from __future__ import annotations

import threading

import pytest

from fpt.stages.train.prefetch import prefetched


def test_items_come_in_order_prepared_in_another_thread() -> None:
    threads = set()

    def prepare(x: int) -> int:
        threads.add(threading.get_ident())
        return x * x

    assert list(prefetched(range(7), prepare)) == [x * x for x in range(7)]
    assert threads and threading.get_ident() not in threads


def test_the_next_item_is_prepared_while_the_current_one_is_used() -> None:
    started = {i: threading.Event() for i in range(4)}

    def prepare(x: int) -> int:
        started[x].set()
        return x

    for item in prefetched(range(4), prepare):
        if item + 1 < 4:  # while "training" on item, item + 1 is being prepared without our asking
            assert started[item + 1].wait(timeout=10)


def test_an_error_is_raised_at_the_item_it_belongs_to() -> None:
    def prepare(x: int) -> int:
        if x == 3:
            raise ValueError("item 3 is broken")
        return x

    got = []
    with pytest.raises(ValueError, match="item 3 is broken"):
        for item in prefetched(range(6), prepare):
            got.append(item)
    assert got == [0, 1, 2]


def test_an_error_of_the_iteration_itself_is_raised() -> None:
    def source():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(prefetched(source(), lambda x: x))


def test_stopping_early_does_not_hang_or_read_far_ahead() -> None:
    produced = []

    def source():
        for i in range(100):
            produced.append(i)
            yield i

    for item in prefetched(source(), lambda x: x):
        if item == 2:
            break
    assert len(produced) <= 4  # the item in use and at most one ahead (plus the one being produced)
