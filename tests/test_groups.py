"""optimlab.param_groups: weight-decay exemptions, lr multipliers, layer-wise lr decay."""

import pytest
import torch
from torch import nn

import optimlab
from optimlab.groups import param_groups


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.frozen = nn.Linear(4, 4)
        self.body = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.ReLU())
        self.bn = nn.BatchNorm1d(4)
        self.act = nn.ReLU()                       # no parameters: not a layer
        self.head = nn.Linear(4, 2)
        self.scale = nn.Parameter(torch.ones(4))   # 1-D, not a bias, not in a norm: decayed
        for p in self.frozen.parameters():
            p.requires_grad_(False)

    def forward(self, idx):
        h = self.frozen(self.embed(idx))
        return self.head(self.act(self.bn(self.body(h) * self.scale)))


def _names(model, groups):
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in g["params"]] for g in groups]


DECAYED = ["scale", "embed.weight", "body.0.weight", "head.weight"]  # own params come first
EXEMPT = ["body.0.bias", "body.1.weight", "body.1.bias", "bn.weight", "bn.bias", "head.bias"]


def test_default_split_and_frozen_excluded():
    model = Net()
    groups = param_groups(model, weight_decay=0.1)
    assert [set(g) for g in groups] == [{"params", "weight_decay"}] * 2
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert _names(model, groups) == [DECAYED, EXEMPT]   # named_parameters order, deterministic
    assert not any(n.startswith("frozen") for names in _names(model, groups) for n in names)


def test_weight_decay_none_only_sets_zero_on_exempt_group():
    model = Net()
    groups = param_groups(model)
    assert groups[0] == {"params": groups[0]["params"]}
    assert groups[1]["weight_decay"] == 0.0 and "lr" not in groups[1]
    assert _names(model, groups) == [DECAYED, EXEMPT]


def test_no_decay_options_and_merging():
    model = Net()
    assert _names(model, param_groups(model, weight_decay=0.1, no_decay=False)) == [
        [n for n, p in model.named_parameters() if p.requires_grad]]
    groups = param_groups(model, weight_decay=0.1, no_decay=["embed.*", "scale"])
    assert _names(model, groups) == [["scale", "embed.weight"] + EXEMPT,   # first appearance
                                     ["body.0.weight", "head.weight"]]
    # equal (lr, weight_decay) merge into one group
    assert len(param_groups(model, weight_decay=0.0)) == 1


@pytest.mark.parametrize("norm", [nn.GroupNorm(2, 4), nn.InstanceNorm1d(4, affine=True),
                                  nn.BatchNorm2d(4), nn.LayerNorm(4, bias=False)]
                         + ([nn.RMSNorm(4)] if hasattr(nn, "RMSNorm") else []),
                         ids=lambda m: type(m).__name__)
def test_norm_modules_detected_by_type(norm):
    model = nn.Sequential(nn.Linear(4, 4, bias=False), norm)
    groups = param_groups(model, weight_decay=0.1)
    assert _names(model, groups) == [["0.weight"], [n for n, _ in norm.named_parameters(prefix="1")]]


def test_lr_multipliers_first_match_wins():
    model = Net()
    groups = param_groups(model, lr=0.01, weight_decay=0.1,
                          lr_multipliers={"head.bias": 3.0, "head.*": 10.0, "*.bias": 0.5})
    by_name = {n: (g["lr"], g["weight_decay"]) for g, names in zip(groups, _names(model, groups))
               for n in names}
    assert by_name["head.weight"] == (pytest.approx(0.1), 0.1)
    assert by_name["head.bias"] == (pytest.approx(0.03), 0.0)
    assert by_name["body.0.bias"] == (pytest.approx(0.005), 0.0)
    assert by_name["body.0.weight"] == (0.01, 0.1)
    assert by_name["bn.weight"] == (0.01, 0.0)
    assert len(groups) == 5


def test_multipliers_need_lr():
    with pytest.raises(ValueError, match="need a base lr"):
        param_groups(Net(), lr_multipliers={"head.*": 10.0})
    with pytest.raises(ValueError, match="need a base lr"):
        param_groups(Net(), layer_decay=0.5)


def test_layer_decay_by_top_level_children():
    model = Net()
    groups = param_groups(model, lr=1.0, layer_decay=0.5, no_decay=False)
    lrs = {n: g["lr"] for g, names in zip(groups, _names(model, groups)) for n in names}
    # layers bottom to top: own params (scale), embed, frozen (counted), body, bn, head
    assert lrs == {"scale": 0.5 ** 5, "embed.weight": 0.5 ** 4, "body.0.weight": 0.25,
                   "body.0.bias": 0.25, "body.1.weight": 0.25, "body.1.bias": 0.25,
                   "bn.weight": 0.5, "bn.bias": 0.5, "head.weight": 1.0, "head.bias": 1.0}
    assert [g["lr"] for g in groups] == [0.5 ** 5, 0.5 ** 4, 0.25, 0.5, 1.0]  # first appearance


def test_layer_decay_explicit_layers_with_multiplier():
    model = Net()
    layers = [("embed", "scale"), "body", "body.1", ("bn", "head")]
    groups = param_groups(model, lr=1.0, weight_decay=0.1, layer_decay=0.1, layers=layers,
                          lr_multipliers={"head.*": 2.0})
    got = {n: (g["lr"], g["weight_decay"]) for g, names in zip(groups, _names(model, groups))
           for n in names}
    assert got["embed.weight"] == (pytest.approx(1e-3), 0.1)
    assert got["body.0.weight"] == (pytest.approx(1e-2), 0.1)
    assert got["body.1.weight"] == (pytest.approx(1e-1), 0.0)   # longest prefix wins
    assert got["head.weight"] == (2.0, 0.1) and got["bn.bias"] == (1.0, 0.0)
    with pytest.raises(ValueError, match="in none of the layers"):
        param_groups(model, lr=1.0, layer_decay=0.5, layers=["embed", "body", "head"])


def test_optimlab_adam_steps_with_groups():
    torch.manual_seed(0)
    model = Net()
    opt = optimlab.Adam(param_groups(model, lr=0.01, weight_decay=0.1,
                                     lr_multipliers={"head.*": 10.0}), lr=0.5)
    assert sorted({g["lr"] for g in opt.param_groups}) == [0.01, pytest.approx(0.1)]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = model(torch.tensor([[1, 2, 3], [4, 5, 6]]).flatten()).pow(2).sum()
    loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) == n.startswith("frozen"), n
    # Adam's first step moves each coordinate with a nonzero gradient by lr.
    moved = (model.head.weight - before["head.weight"]).abs()
    torch.testing.assert_close(moved[moved > 0], torch.full_like(moved[moved > 0], 0.1), rtol=1e-3, atol=0)


@pytest.mark.parametrize("name", ["lbfgs", "rprop", "sparse_adam"])
def test_create_from_module_without_weight_decay_is_one_group(name):
    """Classes without weight_decay have nothing to exempt: one group (LBFGS takes no other)."""
    model = Net()
    model.requires_grad_(True)
    frozen = next(model.parameters())
    frozen.requires_grad_(False)
    opt = optimlab.create(name, model)
    assert len(opt.param_groups) == 1
    assert [id(p) for p in opt.param_groups[0]["params"]] == \
        [id(p) for p in model.parameters() if p.requires_grad]


def test_registry_create_from_module_exempts_biases_and_norms():
    model = Net()
    opt = optimlab.create("adamw", model, lr=1e-3, weight_decay=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    wd = {names[id(p)]: g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert wd == {**{n: 0.1 for n in DECAYED}, **{n: 0.0 for n in EXEMPT}}
    assert all(g["lr"] == 1e-3 for g in opt.param_groups)
