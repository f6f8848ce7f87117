"""An independent NumPy reference of every update rule, and the parity problem.

Written from the papers and torch.optim's documented algorithm boxes, *not* from
``optimlab.rules``. One function per algorithm; each takes the parameter ``p`` and the raw
gradient ``g`` (float64 arrays), a mutable per-parameter ``state`` dict (torch's state keys)
and the param group's hyperparameters as keywords (unknown flags such as ``foreach`` are
ignored), and returns the new parameter value.

Shared conventions (torch.optim):
    g <- -g            if maximize          (before weight decay)
    g <- g + wd * p    coupled (L2) weight decay
    p <- p(1 - lr wd)  decoupled weight decay (AdamW, NAdamW)
"""

from __future__ import annotations

import math

import numpy as np

_FLAGS = ("foreach", "fused", "differentiable", "capturable", "param_names", "initial_lr")


def _grad(p, g, weight_decay, maximize):
    g = -g if maximize else g
    if weight_decay != 0:
        g = g + weight_decay * p
    return g


def _decay(p, g, lr, weight_decay, decoupled, maximize):
    """(p, g) after weight decay: decoupled p <- p (1 - lr wd) (Loshchilov & Hutter 2019),
    else L2 added to the (sign-adjusted) gradient."""
    if decoupled:
        return p * (1.0 - lr * weight_decay), _grad(p, g, 0.0, maximize)
    return p, _grad(p, g, weight_decay, maximize)


def _step(state):
    state["step"] = state.get("step", 0.0) + 1.0
    return state["step"]


def sgd(p, g, state, *, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
        maximize=False, **_):
    """SGD in torch's convention: b_1 = g_1, b_t = mu b_{t-1} + (1 - tau) g_t;
    heavy ball uses b_t, Nesterov uses g_t + mu b_t (Sutskever et al. 2013 reformulated)."""
    g = _grad(p, g, weight_decay, maximize)
    if momentum != 0:
        buf = state.get("momentum_buffer")
        buf = g.copy() if buf is None else momentum * buf + (1.0 - dampening) * g
        state["momentum_buffer"] = buf
        g = g + momentum * buf if nesterov else buf
    return p - lr * g


def adagrad(p, g, state, *, lr, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
            eps=1e-10, maximize=False, **_):
    """Duchi, Hazan & Singer 2011 (diagonal): G_t = G_0 + sum g^2,
    p <- p - lr / (1 + (t-1) lr_decay) * g / (sqrt(G_t) + eps)."""
    t = _step(state)
    g = _grad(p, g, weight_decay, maximize)
    acc = state.get("sum")
    if acc is None:
        acc = np.full_like(p, initial_accumulator_value)
    acc = acc + g * g
    state["sum"] = acc
    clr = lr / (1.0 + (t - 1.0) * lr_decay)
    return p - clr * g / (np.sqrt(acc) + eps)


def rmsprop(p, g, state, *, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
            centered=False, maximize=False, **_):
    """Tieleman & Hinton 2012: v = a v + (1-a) g^2; centered divides by sqrt(v - gbar^2);
    eps added outside the root; optional momentum on the scaled gradient (Graves 2013 style)."""
    _step(state)
    g = _grad(p, g, weight_decay, maximize)
    v = alpha * state.get("square_avg", np.zeros_like(p)) + (1.0 - alpha) * g * g
    state["square_avg"] = v
    if centered:
        gbar = alpha * state.get("grad_avg", np.zeros_like(p)) + (1.0 - alpha) * g
        state["grad_avg"] = gbar
        denom = np.sqrt(v - gbar * gbar) + eps
    else:
        denom = np.sqrt(v) + eps
    if momentum > 0:
        buf = momentum * state.get("momentum_buffer", np.zeros_like(p)) + g / denom
        state["momentum_buffer"] = buf
        return p - lr * buf
    return p - lr * g / denom


def adadelta(p, g, state, *, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False, **_):
    """Zeiler 2012, Algorithm 1, with a learning rate multiplying Delta x:
    E[g^2] = rho E[g^2] + (1-rho) g^2;  dx = -RMS[dx]_{t-1} / RMS[g]_t * g;
    E[dx^2] = rho E[dx^2] + (1-rho) dx^2;  p <- p + lr dx.   RMS[y] = sqrt(E[y^2] + eps)."""
    _step(state)
    g = _grad(p, g, weight_decay, maximize)
    eg2 = rho * state.get("square_avg", np.zeros_like(p)) + (1.0 - rho) * g * g
    edx2 = state.get("acc_delta", np.zeros_like(p))
    dx = -np.sqrt(edx2 + eps) / np.sqrt(eg2 + eps) * g
    state["square_avg"] = eg2
    state["acc_delta"] = rho * edx2 + (1.0 - rho) * dx * dx
    return p + lr * dx


def adam(p, g, state, *, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
         maximize=False, decoupled_weight_decay=False, bias_correction=True, **_):
    """Kingma & Ba 2015, Algorithm 1 (eps outside the corrected root, as torch):
    m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
    p <- p - lr/(1-b1^t) * m / (sqrt(v/(1-b2^t)) + eps).
    AMSGrad (Reddi et al. 2018, as torch): vmax = max(vmax, v), corrected by 1-b2^t of the
    current step. bias_correction=False drops both 1-b^t factors."""
    b1, b2 = betas
    t = _step(state)
    p, g = _decay(p, g, lr, weight_decay, decoupled_weight_decay, maximize)
    m = b1 * state.get("exp_avg", np.zeros_like(p)) + (1.0 - b1) * g
    v = b2 * state.get("exp_avg_sq", np.zeros_like(p)) + (1.0 - b2) * g * g
    state["exp_avg"], state["exp_avg_sq"] = m, v
    if amsgrad:
        v = np.maximum(state.get("max_exp_avg_sq", np.zeros_like(p)), v)
        state["max_exp_avg_sq"] = v
    c1, c2 = (1.0 - b1 ** t, 1.0 - b2 ** t) if bias_correction else (1.0, 1.0)
    return p - (lr / c1) * m / (np.sqrt(v) / math.sqrt(c2) + eps)


def adamw(p, g, state, **hp):
    """Loshchilov & Hutter 2019: Adam with decoupled weight decay p <- p - lr wd p."""
    return adam(p, g, state, **{**hp, "decoupled_weight_decay": True})


def adamax(p, g, state, *, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
           maximize=False, bias_correction=True, **_):
    """Kingma & Ba 2015, Sec. 7.1: u = max(b2 u, |g| + eps) (torch puts eps inside the max),
    p <- p - lr/(1-b1^t) * m / u."""
    b1, b2 = betas
    t = _step(state)
    g = _grad(p, g, weight_decay, maximize)
    m = b1 * state.get("exp_avg", np.zeros_like(p)) + (1.0 - b1) * g
    u = np.maximum(b2 * state.get("exp_inf", np.zeros_like(p)), np.abs(g) + eps)
    state["exp_avg"], state["exp_inf"] = m, u
    c1 = 1.0 - b1 ** t if bias_correction else 1.0
    return p - (lr / c1) * m / u


def nadam(p, g, state, *, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
          momentum_decay=4e-3, decoupled_weight_decay=False, maximize=False,
          bias_correction=True, **_):
    """Dozat 2016 with torch's schedule mu_t = b1 (1 - 0.5 * 0.96^(t psi)):
    p <- p - lr [ (1-mu_t)/(1-prod_{i<=t} mu_i) g + mu_{t+1}/(1-prod_{i<=t+1} mu_i) m ]
              / (sqrt(v/(1-b2^t)) + eps).
    bias_correction=False drops the three normalisers (1 - prod mu, 1 - b2^t).
    ``mu_product`` is kept in float64 here (torch keeps it in float32)."""
    b1, b2 = betas
    t = _step(state)
    p, g = _decay(p, g, lr, weight_decay, decoupled_weight_decay, maximize)
    mu = b1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))
    mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1.0) * momentum_decay))
    prod = state.get("mu_product", 1.0) * mu
    state["mu_product"] = prod
    m = b1 * state.get("exp_avg", np.zeros_like(p)) + (1.0 - b1) * g
    v = b2 * state.get("exp_avg_sq", np.zeros_like(p)) + (1.0 - b2) * g * g
    state["exp_avg"], state["exp_avg_sq"] = m, v
    if bias_correction:
        c_g, c_m, c2 = 1.0 - prod, 1.0 - prod * mu_next, 1.0 - b2 ** t
    else:
        c_g = c_m = c2 = 1.0
    denom = np.sqrt(v / c2) + eps
    return p - lr * ((1.0 - mu) / c_g * g + mu_next / c_m * m) / denom


def radam(p, g, state, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
          decoupled_weight_decay=False, maximize=False, **_):
    """Liu et al. 2020, Algorithm 2: the SMA length rho_t = rho_inf - 2 t b2^t / (1 - b2^t),
    rho_inf = 2/(1-b2) - 1. If rho_t > 5 the adaptive step is used, rectified by
    r_t = sqrt((rho_t-4)(rho_t-2) rho_inf / ((rho_inf-4)(rho_inf-2) rho_t)):
        p <- p - lr * m/(1-b1^t) * r_t * sqrt(1-b2^t) / (sqrt(v) + eps)     (eps as torch)
    else the un-adapted momentum step p <- p - lr * m/(1-b1^t)."""
    b1, b2 = betas
    t = _step(state)
    p, g = _decay(p, g, lr, weight_decay, decoupled_weight_decay, maximize)
    m = b1 * state.get("exp_avg", np.zeros_like(p)) + (1.0 - b1) * g
    v = b2 * state.get("exp_avg_sq", np.zeros_like(p)) + (1.0 - b2) * g * g
    state["exp_avg"], state["exp_avg_sq"] = m, v
    m_hat = m / (1.0 - b1 ** t)
    rho_inf = 2.0 / (1.0 - b2) - 1.0
    rho_t = rho_inf - 2.0 * t * b2 ** t / (1.0 - b2 ** t)
    if rho_t <= 5.0:
        return p - lr * m_hat
    r = math.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
    return p - lr * r * m_hat * math.sqrt(1.0 - b2 ** t) / (np.sqrt(v) + eps)


def rprop(p, g, state, *, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50), maximize=False, **_):
    """Riedmiller & Braun 1993 (Rprop without weight-backtracking, "Rprop-"): per weight,
    if g_t g_{t-1} > 0 the step size D grows by eta+ (at most D_max), if < 0 it shrinks by
    eta- (at least D_min) and the gradient is taken as 0 (no step now, no change of sign
    next time); then p <- p - sign(g) D. D starts at lr."""
    eta_minus, eta_plus = etas
    d_min, d_max = step_sizes
    _step(state)
    g = -g if maximize else g.copy()
    prev = state.get("prev", np.zeros_like(p))
    size = state.get("step_size", np.full_like(p, lr))
    same, flip = g * prev > 0, g * prev < 0
    size = np.where(same, np.minimum(size * eta_plus, d_max), size)
    size = np.where(flip, np.maximum(size * eta_minus, d_min), size)
    size = np.clip(size, d_min, d_max)  # torch also clamps an unchanged step size
    g[flip] = 0.0
    state["prev"], state["step_size"] = g, size
    return p - np.sign(g) * size


def asgd(p, g, state, *, lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0.0,
         maximize=False, **_):
    """Polyak & Juditsky 1992 averaging of SGD iterates, with torch's (Bottou 2012) schedule:
    p <- p (1 - lambd eta_t) - eta_t g;  ax <- ax + mu_t (p - ax);
    eta_{t+1} = lr / (1 + lambd lr t)^alpha,  mu_{t+1} = 1 / max(1, t - t0);  eta_1 = lr, mu_1 = 1.
    torch keeps eta and mu in float32 0-dim state; here they are float64."""
    t = _step(state)
    g = _grad(p, g, weight_decay, maximize)
    eta, mu = state.get("eta", lr), state.get("mu", 1.0)
    p = p * (1.0 - lambd * eta) - eta * g
    ax = state.get("ax", np.zeros_like(p))
    state["ax"] = ax + mu * (p - ax)
    state["eta"] = lr / (1.0 + lambd * lr * t) ** alpha
    state["mu"] = 1.0 / max(1.0, t - t0)
    return p


#: torch.optim class name -> reference rule
RULES = {
    "SGD": sgd, "Adagrad": adagrad, "RMSprop": rmsprop, "Adadelta": adadelta, "Adam": adam,
    "AdamW": adamw, "Adamax": adamax, "NAdam": nadam, "RAdam": radam, "Rprop": rprop, "ASGD": asgd,
}


class Quadratic:
    """The parity problem: f(x) = 1/2 (x - x*)^T H (x - x*) in ``dim`` dimensions, H = Q diag(l) Q^T
    with eigenvalues l log-spaced over ``eig`` (condition number 1e4), and seeded gradient noise
    ``noise * xi_t`` added at step t. x is split into parameter tensors of ``shapes``.
    The default spread 1e-3..1e1 keeps every registry ``test_lr`` stable for plain SGD/NAG
    (lr * l_max < 2) while keeping the condition number at 1e4."""

    def __init__(self, dim=20, shapes=((12,), (2, 4)), eig=(1e-3, 1e1), noise=0.1, steps=300,
                 seed=0, maximize=False):
        assert sum(int(np.prod(s)) for s in shapes) == dim
        rng = np.random.default_rng(seed)
        q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        lam = np.logspace(np.log10(eig[0]), np.log10(eig[1]), dim)
        self.dim, self.shapes = dim, tuple(tuple(s) for s in shapes)
        self.H = (q * lam) @ q.T
        self.x_star = rng.standard_normal(dim)
        self.x0 = rng.standard_normal(dim)
        self.noise = noise * rng.standard_normal((steps, dim))
        # maximize=True: the objective is -f, so an optimizer run with maximize=True still
        # descends on f (and a sign error in ``maximize`` shows up as divergence)
        self.sign = -1.0 if maximize else 1.0

    def loss(self, x):
        d = x - self.x_star
        return 0.5 * d @ self.H @ d

    def grad(self, x, t):
        return self.sign * (self.H @ (x - self.x_star) + self.noise[t % len(self.noise)])

    def split(self, x):
        out, i = [], 0
        for s in self.shapes:
            n = int(np.prod(s))
            out.append(x[i:i + n].reshape(s))
            i += n
        return out


def run_reference(rule, problem, groups, steps, start=0, x=None, states=None):
    """Run ``rule`` on ``problem``; ``groups`` holds one hyperparameter dict per parameter tensor.
    Returns the trajectory (steps, dim) and the per-parameter states."""
    x = problem.x0.copy() if x is None else x.copy()
    states = [{} for _ in problem.shapes] if states is None else states
    traj = []
    for t in range(start, start + steps):
        g_parts = problem.split(problem.grad(x, t))
        p_parts = problem.split(x)
        new = []
        for p, g, st, hp in zip(p_parts, g_parts, states, groups):
            hp = {k: v for k, v in hp.items() if k not in _FLAGS and k != "params"}
            new.append(rule(p.astype(np.float64), g, st, **hp).reshape(-1))
        x = np.concatenate(new)
        traj.append(x)
    return np.array(traj), states
