"""Bad input: torch.optim's ValueErrors (same message start, plus the valid range), TypeError
for unknown keywords, unknown names, and sparse gradients."""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest
import torch
from torch import nn

import optimlab
from conftest import RULE_PARAMS, accepts, tolerance
from optimlab.registry import RULE_ENTRIES
from optimlab.registry import TORCH_ENTRIES as ENTRIES

#: constructor argument -> (bad values, how its message names the valid range)
BAD = {
    "lr": ([-1.0, -1e-3], r">=\s*0"),
    "eps": ([-1.0], r">=\s*0"),
    "weight_decay": ([-1.0, -0.5], r">=\s*0"),
    "momentum": ([-0.5], r">=\s*0"),
    "lr_decay": ([-1.0], r">=\s*0"),
    "initial_accumulator_value": ([-1.0], r">=\s*0"),
    "momentum_decay": ([-1.0], r">=\s*0"),
    "rho": ([-0.1, 1.1], r"\[0, 1\]"),
    "alpha": ([-0.1, 1.1], r"\[0, 1\]"),
    "betas": ([(-0.1, 0.999), (1.0, 0.999), (0.9, 1.0), (0.9, -0.5)], r"\[0, 1\)"),
    "etas": ([(0.0, 1.2), (1.0, 1.2), (0.5, 1.0)], r"0 < etaminus < 1 < etaplus"),
}


def _torch_checks(entry, arg) -> bool:
    """Whether torch validates ``arg`` at all: ASGD takes any ``alpha`` (its schedule's
    power), RMSprop checks only alpha's lower bound. Ours follows torch."""
    for value in BAD[arg][0]:
        try:
            entry.build_torch([torch.zeros(1, requires_grad=True)], **{arg: value})
        except ValueError:
            return True
    return False


def _takes_number(cls, arg) -> bool:
    """``arg`` is a plain number (Adafactor's ``eps`` is a pair, checked in test_torch_inputs)."""
    default = inspect.signature(cls).parameters[arg].default
    return not (isinstance(default, tuple) and arg not in ("betas", "etas"))


BAD_CASES = [pytest.param(e, arg, v, rng, id=f"{e.name}-{arg}={v}")
             for e in ENTRIES for arg, (values, rng) in BAD.items()
             if accepts(e.cls, arg) and _takes_number(e.cls, arg) and _torch_checks(e, arg)
             for v in values]


def _params():
    return [torch.zeros(3, requires_grad=True)]


def _message(build, **kwargs):
    with pytest.raises(ValueError) as info:
        build(_params(), **kwargs)
    return str(info.value)


@pytest.mark.parametrize("entry, arg, value, valid_range", BAD_CASES)
def test_bad_hyperparameter_raises_like_torch(entry, arg, value, valid_range):
    ours = _message(entry.build, **{arg: value})
    try:
        theirs = _message(entry.build_torch, **{arg: value})
    except pytest.fail.Exception:
        # torch does not check this bound (RMSprop's alpha <= 1): its message for the other
        # bound, with this value, is what ours must start with
        other = next(v for v in BAD[arg][0] if v != value)
        theirs = _message(entry.build_torch, **{arg: other}).replace(repr(other), repr(value))
    # whatever regex torch's message matches, ours matches too: it starts with torch's text
    assert re.match(re.escape(theirs), ours), (ours, theirs)
    assert re.search(valid_range, ours), f"message does not name the valid range: {ours!r}"


#: entries torch.optim lacks: no torch message to start with, so theirs is optimlab's style
OWN_BAD_CASES = [pytest.param(e, arg, v, id=f"{e.name}-{arg}={v}")
                 for e in RULE_ENTRIES if e.torch_cls is None
                 for arg, (values, _) in BAD.items() if accepts(e.cls, arg) for v in values]


@pytest.mark.parametrize("entry, arg, value", OWN_BAD_CASES)
def test_bad_hyperparameter_without_torch_twin(entry, arg, value):
    """The message says what was wrong (the argument and value) and what is valid."""
    if arg == "betas":  # as many betas as the class takes (Adan: three)
        default = inspect.signature(entry.cls).parameters["betas"].default
        value = tuple(value) + tuple(default[len(value):])
    message = _message(entry.build, **{arg: value})
    bad = [x for x in value if not 0 <= x < 1] if arg == "betas" else [value]
    assert (arg.rstrip("s") if arg == "betas" else arg) in message.replace("learning rate", "lr")
    assert any(repr(x) in message for x in bad), message
    assert re.search(r"must be (>=|in)", message), message


def test_messages_look_like_torch():
    assert re.match(r"Invalid learning rate: -1\.0", _message(optimlab.SGD, lr=-1.0))
    assert re.match(r"Invalid beta parameter at index 1: 1\.0",
                    _message(optimlab.Adam, betas=(0.9, 1.0)))


NESTEROV = [pytest.param(e, id=e.name) for e in ENTRIES if accepts(e.cls, "nesterov")]


@pytest.mark.parametrize("bad", [{"momentum": 0}, {"momentum": 0.9, "dampening": 0.5}])
@pytest.mark.parametrize("entry", NESTEROV)
def test_nesterov_needs_momentum_and_no_dampening(entry, bad):
    ours = _message(entry.build, nesterov=True, **bad)
    theirs = _message(entry.build_torch, nesterov=True, **bad)
    assert ours.startswith(theirs)
    assert "momentum" in ours and "dampening" in ours


@pytest.mark.parametrize("entry", RULE_PARAMS)
def test_unknown_keyword_is_a_type_error(entry):
    with pytest.raises(TypeError, match="not_a_hyperparameter"):
        entry.build(_params(), not_a_hyperparameter=1)
    with pytest.raises(TypeError, match="not_a_hyperparameter"):
        optimlab.create(entry.name, _params(), not_a_hyperparameter=1)


@pytest.mark.parametrize("entry", RULE_PARAMS)
def test_create_by_name(entry):
    for name in (entry.name, entry.name.upper(), *entry.aliases):
        opt = optimlab.create(name, _params(), lr=0.5)
        assert type(opt) is entry.cls and opt.param_groups[0]["lr"] == 0.5
        assert optimlab.lookup(name) is entry


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        optimlab.create("nope", _params())
    message = str(info.value)
    assert "nope" in message
    for entry in ENTRIES:
        assert entry.name in message


# ----------------------------------------------------------------------- sparse gradients
def _embedding_run(build, variant, steps=5, sparse=True):
    torch.manual_seed(0)
    emb = nn.Embedding(10, 3, sparse=sparse).double()
    opt = build(emb.parameters(), lr=0.1, **variant)
    idx = torch.tensor([[1, 2, 2, 7], [3, 1, 9, 9]])  # repeated rows: uncoalesced grads
    for _ in range(steps):
        opt.zero_grad()
        emb(idx).pow(2).sum().backward()
        assert emb.weight.grad.is_sparse == sparse
        opt.step()
    return emb.weight.detach().clone()


SPARSE_CASES = [pytest.param(e, v, id=f"{e.name}-{i}") for e in ENTRIES
                for i, v in enumerate(e.variants)]


@pytest.mark.parametrize("entry, variant", SPARSE_CASES)
def test_sparse_gradients(entry, variant):
    """Where torch.optim accepts sparse gradients (SGD, Adagrad), optimlab matches it on an
    nn.Embedding(sparse=True); where torch rejects them, optimlab raises a RuntimeError that
    says so. (Where torch accepts sparse grads but not with weight decay, optimlab may instead
    treat the gradient as dense: then it must equal torch's run on the dense gradient.)"""
    try:
        theirs = _embedding_run(entry.build_torch, variant)
    except RuntimeError as refused:
        if "weight_decay" not in variant:  # torch's words, on every path
            for flags in ({}, {"foreach": True}, {"foreach": False}):
                with pytest.raises(RuntimeError) as ours:
                    _embedding_run(entry.build, {**variant, **flags})
                assert str(ours.value) == str(refused), flags
            return
        try:
            ours = _embedding_run(entry.build, variant)
        except RuntimeError as e:
            assert "sparse" in str(e).lower()
            return
        theirs = _embedding_run(entry.build_torch, variant, sparse=False)
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=tolerance(entry), atol=1e-15)
        return
    ours = _embedding_run(entry.build, variant)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=tolerance(entry), atol=1e-15)
    untouched = [0, 4, 5, 6, 8]  # rows never looked up
    torch.manual_seed(0)
    initial = nn.Embedding(10, 3).double().weight.detach()
    if not variant.get("weight_decay"):
        assert torch.equal(ours[untouched], initial[untouched])
    assert not torch.equal(ours[[1, 2]], initial[[1, 2]])


@pytest.mark.parametrize("name", ["adam", "rmsprop", "adadelta", "adamax", "nadam"]
                         + [e.name for e in RULE_ENTRIES if e.torch_cls is None and not e.cls.rule.sparse_ok])
def test_sparse_gradients_rejected(name):
    with pytest.raises(RuntimeError, match="(?i)sparse"):
        _embedding_run(optimlab.lookup(name).build, {})


UNCHECKED = [pytest.param(e, arg, id=f"{e.name}-{arg}") for e in ENTRIES for arg in BAD
             if accepts(e.cls, arg) and _takes_number(e.cls, arg) and not _torch_checks(e, arg)]


@pytest.mark.parametrize("entry, arg", UNCHECKED)
def test_what_torch_accepts_is_accepted(entry, arg):
    """Values torch takes without complaint (ASGD's alpha) are taken here too."""
    for value in BAD[arg][0]:
        entry.build(_params(), **{arg: value})


@pytest.mark.parametrize("flags", [{}, {"foreach": False}, {"fused": False}])
@pytest.mark.parametrize("make", [torch.optim.Adagrad, optimlab.Adagrad], ids=["torch", "optimlab"])
def test_adagrad_refuses_sparse_gradients_with_weight_decay_as_torch_does(make, flags):
    """A sparse grad updates only its rows; weight decay would touch every row."""
    with pytest.raises(RuntimeError, match="^weight_decay option is not compatible with sparse gradients$"):
        _embedding_run(make, {"weight_decay": 0.1, **flags})
