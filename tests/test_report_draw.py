"""The report's figures drawn in two processes (report/draw.py): the same result as in
one, errors raised here, and a child that dies leaves nothing undrawn."""

import os
import time

import pytest

from optimlab.lab.report import draw as D

pytestmark = [pytest.mark.slow,   # forks
              pytest.mark.skipif(not D.can_fork(), reason="fork-based drawing is Linux-only")]


def _jobs():
    def png(i):
        return lambda: (f"figure {i} drawn".encode() * (1000 * i)) if i % 4 else None
    return {f"f{i}": png(i) for i in range(9)}


def test_two_processes_give_what_one_gives():
    jobs = _jobs()
    one = D.draw(jobs, processes=1)
    two = D.draw(jobs, processes=2)
    assert list(two) == list(jobs) and two == one
    assert two["f0"] is None and len(two["f5"]) == 5000 * len(b"figure 5 drawn")


def test_the_child_draws_some_figures():
    parent = os.getpid()

    def job(i):
        def f():
            time.sleep(0.02)   # long enough for the child to start and take some
            return f"{i}:{os.getpid() != parent}".encode()
        return f
    out = D.draw({f"f{i}": job(i) for i in range(40)}, processes=2)
    assert [v.decode().split(":")[0] for v in out.values()] == [str(i) for i in range(40)]
    by_child = sum(v.decode().endswith("True") for v in out.values())
    assert 0 < by_child < 40


def test_an_error_is_raised_in_this_process():
    def bad():
        raise ValueError("no data for this figure")
    jobs = {"a": lambda: b"a", "bad": bad, "b": lambda: b"b"}
    with pytest.raises(ValueError, match="no data"):
        D.draw(jobs, processes=2)


def test_a_dead_child_leaves_nothing_undrawn():
    parent = os.getpid()

    def job(i):
        def f():
            if os.getpid() != parent:
                os._exit(3)   # the child dies on the first figure it takes
            return f"figure {i}".encode()
        return f
    out = D.draw({f"f{i}": job(i) for i in range(6)}, processes=2)
    assert out == {f"f{i}": f"figure {i}".encode() for i in range(6)}
