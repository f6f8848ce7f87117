"""Combined optimizers and Muon's AdamW-for-the-rest split (torch.optim.Muon's documented
convention): which parameters go where, stepping, schedulers, state_dicts, and
``optimlab.create`` on a model for an entry that takes 2-D parameters only.

torch.optim.Muon stands in for a matrices-only optimizer, so these tests do not depend on
optimlab's own Muon.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import optimlab
from optimlab import registry
from optimlab.registry import Entry


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(7, 4)
        self.hidden = nn.Linear(4, 5)
        self.norm = nn.LayerNorm(5)
        self.head = nn.Linear(5, 3)

    def forward(self, idx):
        return self.head(self.norm(torch.relu(self.hidden(self.embed(idx))))).sum()


def _names(model, groups):
    names = {id(p): n for n, p in model.named_parameters()}
    return sorted(names[id(p)] for g in groups for p in g["params"])


def test_muon_param_groups_follow_torchs_convention():
    model = Net()
    matrices, others = optimlab.muon_param_groups(model, weight_decay=0.1)
    assert _names(model, matrices) == ["head.weight", "hidden.weight"]
    assert _names(model, others) == ["embed.weight", "head.bias", "hidden.bias", "norm.bias",
                                     "norm.weight"]
    # param_groups' no-decay split is kept on both sides
    wd = {n: g["weight_decay"] for g in matrices + others for n in _names(model, [g])}
    assert wd["hidden.weight"] == 0.1 and wd["embed.weight"] == 0.1
    assert wd["head.bias"] == 0.0 and wd["norm.weight"] == 0.0


def _combined(model, lr=0.02):
    matrices, others = optimlab.muon_param_groups(model)
    return optimlab.Combined(torch.optim.Muon(matrices, lr=lr), optimlab.AdamW(others, lr=lr))


def test_combined_steps_each_part_as_the_parts_alone_would():
    ours, theirs = Net(), Net()
    opt = _combined(ours)
    muon_groups, adam_groups = optimlab.muon_param_groups(theirs)
    parts = [torch.optim.Muon(muon_groups, lr=0.02), optimlab.AdamW(adam_groups, lr=0.02)]
    idx = torch.tensor([1, 2, 5])
    for _ in range(5):
        opt.zero_grad()
        ours(idx).backward()
        opt.step()
        for part in parts:
            part.zero_grad()
        theirs(idx).backward()
        for part in parts:
            part.step()
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.equal(a, b), name
    assert not torch.equal(ours.hidden.weight, Net().hidden.weight)
    assert len(opt.state) == sum(len(o.state) for o in opt.optimizers)


def test_combined_closure_runs_once_and_schedulers_reach_the_parts():
    model = Net()
    opt = _combined(model, lr=0.1)
    sched = optimlab.LRScheduler(opt, lambda t: 0.5 ** t)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = model(torch.tensor([3]))
        loss.backward()
        return loss

    assert torch.is_tensor(opt.step(closure)) and len(calls) == 1
    sched.step()
    for part in opt.optimizers:
        assert all(g["lr"] == pytest.approx(0.05) for g in part.param_groups)


def test_combined_state_dict_round_trip():
    model = Net()
    opt = _combined(model)
    for _ in range(3):
        opt.zero_grad()
        model(torch.tensor([0, 6])).backward()
        opt.step()
    sd = copy.deepcopy(opt.state_dict())
    other_model = copy.deepcopy(model)
    other = _combined(other_model)
    other.load_state_dict(sd)
    for a, b in zip(opt.optimizers, other.optimizers):
        assert str(a.state_dict()) == str(b.state_dict())
    with pytest.raises(ValueError, match="2 optimizers"):
        optimlab.Combined(optimlab.AdamW(Net().parameters())).load_state_dict(sd)


def test_combined_after_load_state_dict_schedulers_still_reach_the_parts():
    """A part's load_state_dict replaces its groups and state (torch.optim's does): the
    Combined must list the new ones, or a scheduler keeps writing lr into the old dicts."""
    model = Net()
    opt = _combined(model, lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        model(torch.tensor([0, 6])).backward()
        opt.step()
    resumed = _combined(copy.deepcopy(model), lr=0.1)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
    parts = [g for o in resumed.optimizers for g in o.param_groups]
    assert len(resumed.param_groups) == len(parts)
    assert all(a is b for a, b in zip(resumed.param_groups, parts))
    assert len(resumed.state) == sum(len(o.state) for o in resumed.optimizers) > 0
    sched = torch.optim.lr_scheduler.StepLR(resumed, step_size=1, gamma=0.1)
    resumed.step()
    sched.step()
    assert all(g["lr"] == pytest.approx(0.01) for o in resumed.optimizers for g in o.param_groups)


def test_combined_add_param_group_goes_to_a_part():
    model = Net()
    opt = _combined(model)
    extra = nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match=r"opt.optimizers\[i\].add_param_group"):
        opt.add_param_group({"params": [extra]})
    assert all(p is not extra for g in opt.param_groups for p in g["params"])
    opt.optimizers[1].add_param_group({"params": [extra], "lr": 0.1})
    assert opt.param_groups[-1]["params"] == [extra]
    extra.grad = torch.ones(3)
    opt.step()
    assert (extra < 1).all()
    with pytest.raises(AttributeError, match="parts"):
        opt.param_groups = []


def test_combined_rejects_shared_parameters():
    p = torch.zeros(2, 2, requires_grad=True)
    with pytest.raises(ValueError, match="share"):
        optimlab.Combined(optimlab.SGD([p]), optimlab.AdamW([p]))


def test_create_on_a_model_splits_for_a_matrices_only_entry(monkeypatch):
    entry = Entry("fake_muon", torch.optim.Muon, "a stand-in", "none", matrices_only=True)
    monkeypatch.setitem(registry.REGISTRY, entry.name, entry)
    model = Net()
    opt = optimlab.create("fake_muon", model, lr=0.05, weight_decay=0.2)
    muon, adamw = opt.optimizers
    assert _names(model, muon.param_groups) == ["head.weight", "hidden.weight"]
    assert {g["lr"] for g in opt.param_groups} == {0.05}
    assert {g["weight_decay"] for g in muon.param_groups} == {0.2}
    assert type(adamw) is optimlab.AdamW
    # a model without 2-D weights: AdamW alone; with only 2-D weights: the entry alone
    assert type(optimlab.create("fake_muon", nn.LayerNorm(3), lr=0.1)) is optimlab.AdamW
    assert type(optimlab.create("fake_muon", nn.Linear(3, 2, bias=False), lr=0.1)) is torch.optim.Muon
    # given parameters rather than a model, the entry gets them as they are
    with pytest.raises(ValueError, match="2D"):
        optimlab.create("fake_muon", Net().parameters())
