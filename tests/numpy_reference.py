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


def adabelief(p, g, state, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-16, weight_decay=0.0,
              amsgrad=False, decoupled_weight_decay=True, maximize=False, **_):
    """Zhuang et al. 2020, Algorithm 2:
    m = b1 m + (1-b1) g;  s = b2 s + (1-b2) (g - m)^2 + eps;
    p <- p - lr * (m / (1-b1^t)) / (sqrt(s / (1-b2^t)) + eps).
    AMSGrad: the denominator uses the running maximum of s (s itself is not clipped)."""
    b1, b2 = betas
    t = _step(state)
    p, g = _decay(p, g, lr, weight_decay, decoupled_weight_decay, maximize)
    m = b1 * state.get("exp_avg", np.zeros_like(p)) + (1.0 - b1) * g
    s = b2 * state.get("exp_avg_var", np.zeros_like(p)) + (1.0 - b2) * (g - m) ** 2 + eps
    state["exp_avg"], state["exp_avg_var"] = m, s
    if amsgrad:
        s = np.maximum(state.get("max_exp_avg_var", np.zeros_like(p)), s)
        state["max_exp_avg_var"] = s
    m_hat, s_hat = m / (1.0 - b1 ** t), s / (1.0 - b2 ** t)
    return p - lr * m_hat / (np.sqrt(s_hat) + eps)


def adan(p, g, state, *, lr=1e-3, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=0.0,
         no_prox=False, maximize=False, **_):
    """Xie et al. 2022, Algorithm 1, in the paper's notation (c_i = 1 - beta_i):
    m = (1-c1) m + c1 g;  v = (1-c2) v + c2 (g - g_prev);  n = (1-c3) n + c3 (g + (1-c2)(g - g_prev))^2;
    p <- (p - lr (m_hat + (1-c2) v_hat) / (sqrt(n_hat) + eps)) / (1 + lr wd),
    with the authors' code's zero start and bias corrections (hat: / (1 - (1-c)^t)) and
    g_prev = g at the first step; ``no_prox``: p (1 - lr wd) in place of the division."""
    c1, c2, c3 = (1.0 - b for b in betas)
    t = _step(state)
    g = -g if maximize else g
    g_prev = state.get("pre_grad", g)
    m = (1.0 - c1) * state.get("exp_avg", np.zeros_like(p)) + c1 * g
    v = (1.0 - c2) * state.get("exp_avg_diff", np.zeros_like(p)) + c2 * (g - g_prev)
    n = (1.0 - c3) * state.get("exp_avg_sq", np.zeros_like(p)) + c3 * (g + (1.0 - c2) * (g - g_prev)) ** 2
    state.update(exp_avg=m, exp_avg_diff=v, exp_avg_sq=n, pre_grad=g)
    m_hat, v_hat, n_hat = (x / (1.0 - (1.0 - c) ** t) for x, c in ((m, c1), (v, c2), (n, c3)))
    step = lr * (m_hat + (1.0 - c2) * v_hat) / (np.sqrt(n_hat) + eps)
    if no_prox:
        return p * (1.0 - lr * weight_decay) - step
    return (p - step) / (1.0 + lr * weight_decay)


def _schedule_free(p, g, state, direction, beta, *, lr, warmup_steps, r, weight_lr_power,
                   adam_beta2=None):
    """Defazio et al. 2024, Algorithm 1, with x, y, z all kept (y is the parameter):
    lr_t = lr min(1, t/T) [sqrt(1 - b2^t)];  z <- z - lr_t d(g, y);
    c = w_t / sum w_i, w_t = t^r max_{i<=t}(lr_i)^P;  x <- (1-c) x + c z;  y = (1-beta) z + beta x.
    The per-step scalars are kept per parameter here (every parameter steps every time)."""
    t = _step(state)
    x, z = state.get("x", p), state.get("z", p)
    lr_t = lr * min(1.0, t / warmup_steps if warmup_steps else 1.0)
    if adam_beta2 is not None:
        lr_t *= math.sqrt(1.0 - adam_beta2 ** t)
    z = z - lr_t * direction
    state["lr_max"] = max(state.get("lr_max", -1.0), lr_t)
    w = t ** r * state["lr_max"] ** weight_lr_power
    state["weight_sum"] = state.get("weight_sum", 0.0) + w
    c = w / state["weight_sum"] if state["weight_sum"] else 0.0
    x = (1.0 - c) * x + c * z
    state["x"], state["z"] = x, z
    return (1.0 - beta) * z + beta * x


def schedule_free_adamw(p, g, state, *, lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                        warmup_steps=0, r=0.0, weight_lr_power=2.0, maximize=False, **_):
    """Schedule-Free AdamW: d = g / (sqrt(v) + eps) + wd y, v = b2 v + (1-b2) g^2 (v unbiased
    through lr_t's sqrt(1 - b2^t))."""
    g = -g if maximize else g
    v = betas[1] * state.get("exp_avg_sq", np.zeros_like(p)) + (1.0 - betas[1]) * g * g
    state["exp_avg_sq"] = v
    direction = g / (np.sqrt(v) + eps) + weight_decay * p
    return _schedule_free(p, g, state, direction, betas[0], lr=lr, warmup_steps=warmup_steps, r=r,
                          weight_lr_power=weight_lr_power, adam_beta2=betas[1])


def schedule_free_sgd(p, g, state, *, lr=1.0, momentum=0.9, weight_decay=0.0, warmup_steps=0,
                      r=0.0, weight_lr_power=2.0, maximize=False, **_):
    """Schedule-Free SGD: d = g + wd y."""
    g = -g if maximize else g
    return _schedule_free(p, g, state, g + weight_decay * p, momentum, lr=lr,
                          warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power)


#: torch.optim class name (for entries with a torch twin) or registry name -> reference rule
RULES = {
    "SGD": sgd, "Adagrad": adagrad, "RMSprop": rmsprop, "Adadelta": adadelta, "Adam": adam,
    "AdamW": adamw, "Adamax": adamax, "NAdam": nadam,
    "adabelief": adabelief, "adan": adan,
    "schedule_free_adamw": schedule_free_adamw, "schedule_free_sgd": schedule_free_sgd,
}


def rule_for(entry):
    """The reference rule of a registry entry: by its name, else by its torch twin's class."""
    if entry.name in RULES:
        return RULES[entry.name]
    return RULES[entry.torch_cls.__name__]


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
