"""The problem suite: registry, interface contract, determinism, optima, custom loading."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import optimlab
from optimlab.lab import problems
from optimlab.lab.problems import Problem, base, classification, language, regression, sparse
from optimlab.lab.problems._common import EpochSampler

ALL = problems.names()
# Full-batch problems whose start point is fixed by definition (theta = 0).
SEED_FREE = {"five-points"}
DETERMINISTIC_BATCH = {"five-points", "rosenbrock", "rosenbrock-far", "beale", "rastrigin",
                       "saddle", "ill-conditioned"}
# (problem, learning rate) pairs where 50 Adam steps must clearly reduce the train loss.
DESCENT = {"rosenbrock": 0.02, "ill-conditioned": 0.05, "noisy-quadratic": 0.05,
           "five-points": 0.1, "diabetes": 0.02, "digits-logistic": 0.01,
           "sparse-bow": 0.01, "digits-mlp": 3e-3, "digits-mlp-dropout": 3e-3,
           "digits-cnn": 3e-3, "markov-lm": 1e-2, "digits-vae": 3e-3}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tiny workloads run many times slower on a contended thread pool (2 shared
    cores); pin torch and BLAS to one thread for this module and restore afterwards."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def same_batch(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def train(p: Problem, lr: float, steps: int, seed: int = 0):
    model = p.model(seed)
    opt = optimlab.Adam(model.parameters(), lr=lr)
    for step in range(steps):
        opt.zero_grad()
        p.loss(model, p.batch(step, seed)).backward()
        opt.step()
    return model


# --- registry -------------------------------------------------------------------------

def test_registry_and_suites():
    assert ALL == list(problems.PROBLEMS) == problems.FULL_SUITE
    assert len(set(ALL)) == len(ALL)
    assert set(problems.DEFAULT_SUITE) <= set(ALL)
    kinds = {problems.get(n).kind for n in ALL}
    assert kinds == set(base.KINDS)
    default_kinds = {problems.get(n).kind for n in problems.DEFAULT_SUITE}
    assert default_kinds == set(base.KINDS) - {"cnn"}
    assert 7 <= len(problems.DEFAULT_SUITE) <= 10
    # Two 2-D problems for the trajectory figures: the banana valley and the ravine.
    assert {"rosenbrock", "ill-conditioned"} <= set(problems.DEFAULT_SUITE)
    assert [n for n in problems.DEFAULT_SUITE if problems.get(n).kind == "2d"] == \
        ["rosenbrock", "ill-conditioned"]


def test_get_unknown_lists_valid_names():
    with pytest.raises(ValueError, match="unknown problem 'nope'.*rosenbrock.*digits-vae"):
        problems.get("nope")


def test_get_is_cached():
    assert problems.get("rosenbrock") is problems.get("rosenbrock")


# --- interface contract for every problem --------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_problem_contract(name):
    p = problems.get(name)
    assert isinstance(p, Problem) and p.name == name and p.kind in base.KINDS
    assert p.description and p.default_steps > 0
    model = p.model(0)
    loss = p.loss(model, p.batch(0, 0))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in model.parameters())
    for split in ("train", "val", "test"):
        out = p.evaluate(model, split)
        assert set(out) == {"loss", "metric"}
        assert isinstance(out["loss"], float) and math.isfinite(out["loss"])
        if p.metric_name is None:
            assert out["metric"] is None
        else:
            assert isinstance(out["metric"], float) and 0.0 <= out["metric"] <= 1.0
    assert p.evaluate(model, "train") == p.evaluate(model, "train")
    with pytest.raises(ValueError, match="split"):
        p.evaluate(model, "training")
    if p.optimum is not None and p.target is not None:
        assert p.target > p.optimum


@pytest.mark.parametrize("name", ALL)
def test_float_dtypes(name):
    p = problems.get(name)
    expected = torch.float64 if p.kind == "2d" else torch.float32
    assert all(q.dtype == expected for q in p.model(0).parameters())


@pytest.mark.parametrize("name", sorted(DESCENT))
def test_adam_reduces_loss(name):
    p = problems.get(name)
    before = p.evaluate(p.model(0), "train")["loss"]
    after = p.evaluate(train(p, DESCENT[name], 50), "train")["loss"]
    assert after < before - 0.1 * abs(before - (p.optimum or 0.0))


# --- determinism ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_determinism(name):
    p = problems.get(name)
    state = torch.get_rng_state()
    assert same(params(p.model(0)), params(p.model(0)))
    assert same(params(p.model(3)), params(p.model(3)))
    for step in (0, 7, 123):
        assert same_batch(p.batch(step, 0), p.batch(step, 0))
    # Nothing leaks into the global RNG.
    assert torch.equal(torch.get_rng_state(), state)
    if name not in SEED_FREE:
        assert not same(params(p.model(0)), params(p.model(1)))
    if name not in DETERMINISTIC_BATCH:
        assert not same_batch(p.batch(5, 0), p.batch(5, 1))
        assert not same_batch(p.batch(5, 0), p.batch(6, 0))


def test_batches_do_not_depend_on_call_history():
    p = problems.get("digits-mlp-dropout")
    first = p.batch(40, 2)
    for step in range(200):
        p.batch(step, step % 5)
    assert same_batch(first, p.batch(40, 2))


def test_epoch_sampler_is_a_permutation_per_epoch():
    s = EpochSampler(100, 32, key=1)
    assert s.steps_per_epoch == 3
    epoch = torch.cat([s(k, 0) for k in range(3)])
    assert len(set(epoch.tolist())) == 96
    assert not torch.equal(torch.cat([s(k, 0) for k in range(3, 6)]), epoch)
    with pytest.raises(ValueError):
        EpochSampler(10, 11, key=1)


def test_2d_start_points_and_jitter():
    p = problems.get("rosenbrock")
    assert torch.equal(p.model(0).xy.detach(), torch.tensor([-1.2, 1.0], dtype=torch.float64))
    delta = (p.model(1).xy - p.model(0).xy).abs().max().item()
    assert 0 < delta < 0.1
    saddle = problems.get("saddle").model(4).xy.detach()
    assert abs(saddle[1].item() - 1e-3) < 1e-3


# --- optima and surfaces ----------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in ALL if problems.get(n).kind == "2d"])
def test_2d_surface_matches_loss_and_minima(name):
    p = problems.get(name)
    model = p.model(0)
    x, y = model.xy.tolist()
    assert p.surface(x, y) == pytest.approx(p.evaluate(model, "train")["loss"], rel=1e-12)
    grid = p.surface(np.array([[x, 0.3]]), np.array([[y, -0.2]]))
    assert grid.shape == (1, 2)
    (xmin, xmax), (ymin, ymax) = p.bounds
    assert xmin < x < xmax and ymin < y < ymax
    for mx, my in p.minima:
        assert p.surface(mx, my) == pytest.approx(p.optimum, abs=1e-12)
        assert xmin <= mx <= xmax and ymin <= my <= ymax


def test_rosenbrock_optimum():
    p = problems.get("rosenbrock")
    assert p.optimum == 0.0 and p.minima == ((1.0, 1.0),)
    model = p.model(0)
    with torch.no_grad():
        model.xy.copy_(torch.tensor([1.0, 1.0]))
    assert p.evaluate(model, "train")["loss"] == 0.0
    assert p.surface(1.0 + 1e-3, 1.0) > 0


def test_saddle_is_unbounded_with_escape_target():
    p = problems.get("saddle")
    assert p.optimum is None and p.target == -1.0 and p.minima == ()
    assert p.surface(0.0, 2.0) == -4.0
    assert p.evaluate(train(p, 0.05, 100), "train")["loss"] < p.target


def test_five_points_closed_form():
    p = problems.get("five-points")
    # Hand-derived: slope 22/10 = 2.2, intercept 5.6 - 3 * 2.2 = -1, residual MSE 2.8 / 5.
    assert p.optimum == pytest.approx(0.56, abs=1e-12)
    model = p.model(0)
    assert all(torch.all(q == 0) for q in model.parameters())
    with torch.no_grad():
        model.weight.fill_(2.2)
        model.bias.fill_(-1.0)
    assert p.evaluate(model, "train")["loss"] == pytest.approx(0.56, abs=1e-5)


def test_diabetes_optimum_matches_sklearn():
    from sklearn.linear_model import LinearRegression

    p = problems.get("diabetes")
    x, y = regression.diabetes_data()["train"]
    x, y = x.double().numpy(), y.double().numpy()
    fit = LinearRegression().fit(x, y)
    assert p.optimum == pytest.approx(np.mean((fit.predict(x) - y) ** 2), abs=1e-10)
    assert p.evaluate(train(p, 0.02, 100), "train")["loss"] >= p.optimum - 1e-6


def test_digits_logistic_optimum_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    p = problems.get("digits-logistic")
    x, y = classification.digits_data()["train"]
    # Same objective: mean CE + L2/2 |W|^2  <=>  sklearn's |W|^2/2 + C sum CE, C = 1/(n L2).
    clf = LogisticRegression(C=1.0 / (len(y) * classification.L2), tol=1e-10, max_iter=10000)
    clf.fit(x.double().numpy(), y.numpy())
    lin = torch.nn.Linear(64, 10, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(clf.coef_))
        lin.bias.copy_(torch.from_numpy(clf.intercept_))
        value = float(classification.logistic_objective(lin, x.double(), y))
    assert p.optimum == pytest.approx(value, abs=1e-7)
    assert p.evaluate(train(p, 0.01, 200), "train")["loss"] >= p.optimum - 1e-5


def test_sparse_bow_optimum_matches_torch_lbfgs():
    from optimlab.lab.problems._common import solve_convex

    p = problems.get("sparse-bow")
    x, y = sparse.bow_data()["train"]
    lin = torch.nn.Linear(sparse.VOCAB, 1, dtype=torch.float64)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    xd, yd = x.double(), y.double()
    value, _ = solve_convex(lambda: sparse.objective(lin, xd, yd), list(lin.parameters()),
                            grad_tol=1e-7)
    assert p.optimum == pytest.approx(value, abs=1e-8)
    assert p.evaluate(train(p, 0.01, 100), "train")["loss"] >= p.optimum - 1e-5


def test_sparse_bow_features_are_sparse_and_zipfian():
    x, y = sparse.bow_data()["train"]
    assert set(torch.unique(x).tolist()) <= {0.0, 1.0}
    assert x.mean() < 0.05                       # ~1.6% of the vocabulary per document
    freq = x.sum(0)
    assert freq[:10].mean() > 50 * freq[-500:].mean()
    assert 0.3 < y.mean() < 0.7


def test_markov_entropy_rate_by_monte_carlo():
    p = problems.get("markov-lm")
    trans = language.transition()
    assert np.allclose(trans.sum(axis=2), 1.0)
    h = language.entropy_rate()
    assert p.optimum == h and 0.5 < h < math.log(language.SYMBOLS)
    # Independent estimate: mean negative log-likelihood of a long fresh sample path
    # under the true chain (standard error ~0.003 nats at this length).
    s = language.sample_chain(200_000, seed=99)
    nll = -np.log(trans[s[:-2], s[1:-1], s[2:]]).mean()
    assert nll == pytest.approx(h, abs=0.02)


def test_markov_text_statistics_match_chain():
    x, y = language.text_data()["train"]
    assert x.shape == (len(y), language.CONTEXT)
    assert torch.equal(x[1:, -1], y[:-1])            # consecutive windows of one text
    trans = torch.from_numpy(language.transition())
    nll = -torch.log(trans[x[:, -2], x[:, -1], y]).mean().item()
    assert nll == pytest.approx(language.entropy_rate(), abs=0.05)


# --- problem-specific details --------------------------------------------------------------

def test_dropout_only_in_training_batches():
    p = problems.get("digits-mlp-dropout")
    xb, yb, mask = p.batch(0, 0)
    assert mask.shape == (xb.shape[0], classification.HIDDEN)
    assert set(torch.unique(mask).tolist()) == {0.0, 1.0 / (1.0 - classification.DROPOUT)}
    assert len(problems.get("digits-mlp").batch(0, 0)) == 2


def test_fast_max_pool_matches_torch():
    h = torch.randn(5, 3, 8, 8)
    assert torch.equal(classification.max_pool2(h), F.max_pool2d(h, 2))


def test_vae_noise_comes_from_the_batch():
    p = problems.get("digits-vae")
    x, _, eps = p.batch(0, 0)
    assert eps.shape == (x.shape[0], 8)
    assert 0.0 <= x.min() and x.max() <= 1.0
    model = p.model(0)
    assert p.loss(model, p.batch(0, 0)).item() == p.loss(model, p.batch(0, 0)).item()
    assert p.loss(model, p.batch(0, 0)).item() != p.loss(model, p.batch(0, 1)).item()


def test_noisy_quadratic_spectrum():
    from optimlab.lab.problems import quadratic

    lam, h, noise_map = quadratic.spectrum()
    eig = torch.linalg.eigvalsh(h.double())
    assert torch.allclose(eig.flip(0), lam.double(), rtol=1e-4, atol=1e-6)
    assert lam.max() / lam.min() == pytest.approx(1000, rel=1e-3)
    assert (lam < 0.1 * lam.max()).float().mean() > 0.9     # most eigenvalues are small
    # Noise covariance M M^T = sigma^2 H.
    cov = noise_map.double() @ noise_map.double().T
    assert torch.allclose(cov, quadratic.NOISE ** 2 * h.double(), atol=1e-5)


# --- custom problems -----------------------------------------------------------------------

CUSTOM = '''
import torch
from optimlab.lab.problems import get
from optimlab.lab.problems.functions2d import make_2d

def factory():
    return make_2d("bowl", lambda x, y, xp: x ** 2 + y ** 2, (1.0, 1.0),
                   ((-2, 2), (-2, 2)), [(0.0, 0.0)], 0.0, 1e-3, "a bowl")

def not_a_problem():
    return 42

def named_like_a_built_in():
    return make_2d("rosenbrock", lambda x, y, xp: x ** 2 + y ** 2, (1.0, 1.0),
                   ((-2, 2), (-2, 2)), [(0.0, 0.0)], 0.0, 1e-3, "a bowl")

def of_no_kind():
    p = factory()
    p.kind = "weird"
    return p

NOT_CALLABLE = 3
'''


@pytest.fixture
def custom_module(tmp_path, monkeypatch):
    (tmp_path / "my_custom_problems.py").write_text(CUSTOM)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_custom_problems"


def test_load_custom(custom_module):
    p = problems.load_custom(f"{custom_module}:factory")
    assert isinstance(p, Problem) and p.name == "bowl"
    assert p.evaluate(p.model(0), "val")["loss"] == 2.0


@pytest.mark.parametrize("spec, message", [
    ("no_colon_here", "must look like"),
    (":factory", "must look like"),
    ("{mod}:", "must look like"),
    ("surely_not_a_module_xyz:factory", "cannot import"),
    ("{mod}:missing", "no attribute 'missing'"),
    ("{mod}:NOT_CALLABLE", "not callable"),
    ("{mod}:not_a_problem", "returned int"),
    ("{mod}:named_like_a_built_in", "'rosenbrock', the name of a built-in problem"),
    ("{mod}:of_no_kind", "has kind 'weird'; the kinds are 2d, quadratic"),
])
def test_load_custom_bad_specs(custom_module, spec, message):
    with pytest.raises(ValueError, match=message):
        problems.load_custom(spec.format(mod=custom_module))


@pytest.mark.parametrize("name", ["digits-logistic", "digits-mlp", "sparse-bow"])
def test_evaluation_shares_one_forward_for_loss_and_metric(name):
    """``evaluate`` computes the loss and the metric from one forward pass, with the same
    values as two separate passes."""
    p = problems.get(name)
    model = p.model(3)
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    out = p.evaluate(model, "val")
    assert len(calls) == 1
    data = sparse.bow_data() if name == "sparse-bow" else classification.digits_data()
    x, y = data["val"]
    with torch.no_grad():
        separate_loss = p.evaluate_loss(model, "val")
        logits = model(x)
    assert out["loss"] == separate_loss
    assert len(calls) == 3
    pred = (logits.squeeze(-1) > 0).to(y.dtype) if logits.shape[-1] == 1 else logits.argmax(1)
    assert out["metric"] == float((pred == y).float().mean())
