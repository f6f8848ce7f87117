"""Failures that must not hang or crash the command line: a huge but finite loss, a run that
raises, a custom problem whose factory fails. Each ends in a report or in one line."""

from __future__ import annotations

import math
import sys

import pytest

from optimlab.lab import cli
from optimlab.lab.store import Store

@pytest.mark.parametrize("exploded", ["default", "off"])
def test_a_huge_finite_loss_finishes_with_a_report(tmp_path, monkeypatch, capsys, exploded):
    """SGD at lr 0.1 on the ravine ends at val loss ~5.6e191, finite: it is a divergence
    (runner.EXPLODED), and with that rule off (an older store's "ok" runs) the statistics
    still do not overflow: compare and report finish (was OverflowError, every time)."""
    from optimlab.lab import runner

    if exploded == "off":
        monkeypatch.setattr(runner, "EXPLODED", math.inf)
    out = tmp_path / "m2"
    argv = ["compare", "--problems", "ill-conditioned", "--optimizers", "sgd", "--lrs",
            "0.01,0.1", "--seeds", "2", "--steps", "100", "--workers", "1", "--out", str(out)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    status = {r.spec.lr: r.status for r in Store(out / cli.STORE_NAME).records()
              if r.spec.seed == 0}
    assert status == {0.01: "ok", 0.1: "diverged" if exploded == "default" else "ok"}
    assert (out / "report.html").is_file()
    assert cli.main(["report", str(out)]) == 0
    assert "error" not in capsys.readouterr().err


def _module(tmp_path, monkeypatch, name, body) -> str:
    """A custom problem module ``name`` in tmp_path, importable here."""
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_a_run_that_raises_stops_compare_naming_it(tmp_path, monkeypatch, capsys):
    """An error is not retried round after round until "the lr search did not converge":
    each run is tried once, and compare stops with one line naming the runs and the error."""
    mod = _module(tmp_path, monkeypatch, "raising_problem_h2", (
        "import dataclasses\nfrom test_runner import noisy_quadratic\nCALLS = []\n\n"
        "def make():\n"
        "    def loss(m, b):\n"
        "        CALLS.append(1)\n"
        "        raise ValueError('bad loss value')\n"
        "    return dataclasses.replace(noisy_quadratic('err-quad'), loss=loss)\n"))
    argv = ["compare", "--problem", f"{mod}:make", "--optimizers", "sgd", "--lrs", "0.01,0.1",
            "--seeds", "2", "--steps", "5", "--workers", "1", "--no-report",
            "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert line.startswith("optimlab: error: 2 runs raised an error: ValueError: bad loss "
                           "value (err-quad/sgd lr 0.01 seed 0, err-quad/sgd lr 0.1 seed 0)")
    assert "Traceback" not in err and "did not converge" not in err
    assert len(sys.modules[mod].CALLS) == 2   # each run once
    # The store keeps them as errors; the next command retries them (once) and stops again.
    assert cli.main(argv) == 1 and len(sys.modules[mod].CALLS) == 4


@pytest.mark.parametrize("body, needle", [
    ("def make():\n    raise RuntimeError('boom in factory')\n",
     "custom problem '{mod}:make' failed: RuntimeError: boom in factory"),
    ("def make(size):\n    pass\n",
     "custom problem '{mod}:make' failed: TypeError: make() missing 1 required positional"),
])
def test_a_failing_problem_factory_is_a_user_error(tmp_path, monkeypatch, capsys, body, needle):
    mod = _module(tmp_path, monkeypatch, f"factory_m6_{len(body)}", body)
    code = cli.main(["compare", "--problem", f"{mod}:make", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("optimlab: error: " + needle.format(mod=mod)), err
