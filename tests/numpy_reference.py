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


def adafactor(p, g, state, *, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0,
              weight_decay=0.0, maximize=False, **_):
    """Shazeer & Stern 2018, Algorithms 4 (matrices, factored) and 5 (vectors), with update
    clipping and relative step size, in torch's documented form: beta2_t = 1 - t^decay,
    rho_t = min(lr, 1/sqrt(t)), alpha_t = max(eps2, RMS(p)) rho_t; means of g^2 instead
    of sums; eps1 (None: float64's machine epsilon) floors mean(R) and V:
    R = b R + (1-b) mean_j g_ij^2,  C = b C + (1-b) mean_i g_ij^2,  V = R C / max(mean_i R_i, eps1);
    U = g / sqrt(max(V, eps1^2));  p <- p (1 - lr wd) - alpha_t / max(1, RMS(U)/d) * U."""
    eps1, eps2 = eps
    eps1 = np.finfo(np.float64).eps if eps1 is None else eps1
    t = _step(state)
    g = -g if maximize else g
    decay = t ** beta2_decay  # 1 - beta2_t
    alpha = max(eps2, math.sqrt(np.mean(p * p))) * min(lr, 1.0 / math.sqrt(t))
    if g.ndim > 1:
        r = (1 - decay) * state.get("row_var", 0.0) + decay * np.mean(g * g, axis=-1, keepdims=True)
        c = (1 - decay) * state.get("col_var", 0.0) + decay * np.mean(g * g, axis=-2, keepdims=True)
        state["row_var"], state["col_var"] = r, c
        v = r * c / np.maximum(np.mean(r, axis=-2, keepdims=True), eps1)
    else:
        v = (1 - decay) * state.get("variance", 0.0) + decay * g * g
        state["variance"] = v
    u = g / np.sqrt(np.maximum(v, eps1 * eps1))
    clip = max(1.0, math.sqrt(np.mean(u * u)) / d)
    return p * (1.0 - lr * weight_decay) - alpha / clip * u


def lamb(p, g, state, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0,
         clamp_value=10.0, bias_correction=True, maximize=False, **_):
    """You et al. 2020, Algorithm 2: Adam's moments (bias-corrected), r = m^/(sqrt(v^) + eps),
    then x <- x - lr phi(||x||) / ||r + lambda x|| (r + lambda x), phi(z) = min(z, clamp_value);
    eps next to the norm and a ratio of 1 where a norm is 0 (guards the paper leaves out)."""
    b1, b2 = betas
    t = _step(state)
    g = -g if maximize else g
    m = b1 * state.get("exp_avg", np.zeros_like(p)) + (1.0 - b1) * g
    v = b2 * state.get("exp_avg_sq", np.zeros_like(p)) + (1.0 - b2) * g * g
    state["exp_avg"], state["exp_avg_sq"] = m, v
    c1, c2 = (1.0 - b1 ** t, 1.0 - b2 ** t) if bias_correction else (1.0, 1.0)
    r = (m / c1) / (np.sqrt(v / c2) + eps) + weight_decay * p
    phi, r_norm = min(np.linalg.norm(p), clamp_value), np.linalg.norm(r)
    ratio = phi / (r_norm + eps) if phi > 0 and r_norm > 0 else 1.0
    return p - lr * ratio * r


def lars(p, g, state, *, lr=1e-3, weight_decay=0.0, momentum=0.9, dampening=0.0,
         trust_coefficient=1e-3, nesterov=False, exclude_vectors=False, maximize=False, **_):
    """You, Gitman & Ginsburg 2017, Algorithm 1, with the global lr inside the momentum:
    lambda = eta ||w|| / (||g|| + beta ||w||);  v <- m v + (1 - dampening) lr lambda (g + beta w);
    w <- w - v  (Nesterov: w <- w - lr lambda (g + beta w) - m v). exclude_vectors: tensors of
    dimension < 2 take lambda = 1 and beta = 0."""
    g = -g if maximize else g
    if exclude_vectors and p.ndim < 2:
        u = g
    else:
        w_norm, g_norm = np.linalg.norm(p), np.linalg.norm(g)
        den = g_norm + weight_decay * w_norm
        ratio = trust_coefficient * w_norm / den if w_norm > 0 and den > 0 else 1.0
        u = ratio * (g + weight_decay * p)
    if momentum == 0:
        return p - lr * u
    v = momentum * state.get("momentum_buffer", np.zeros_like(p)) + (1.0 - dampening) * lr * u
    state["momentum_buffer"] = v
    return p - (lr * u + momentum * v if nesterov else v)


def prodigy(ps, gs, states, group, *, lr=1.0, betas=(0.9, 0.999), beta3=None, eps=1e-8,
            weight_decay=0.0, decouple=True, use_bias_correction=False, safeguard_warmup=False,
            d0=1e-6, d_coef=1.0, growth_rate=math.inf, maximize=False, **_):
    """Mishchenko & Defazio 2024, Algorithm 3 (Adam version), over one param group (lists of
    parameters/gradients/states; ``group`` holds d, d_max, r and k):
    m <- b1 m + (1-b1) d g;  v <- b2 v + (1-b2) d^2 g^2;
    r <- b3 r + (1-b3) gamma d^2 <g, x0 - x>;  s <- b3 s + (1-b3) gamma d^2 g  (sums over the group);
    x <- x - gamma d m / (sqrt(v) + d eps)   (beta1 = 0: m = d g);
    d <- max(d, d_coef r / ||s||_1), capped at d * growth_rate after the first increase.
    gamma = lr, times sqrt(1 - b2^(k+1)) / (1 - b1^(k+1)) with bias correction; safeguard_warmup
    drops gamma from s; weight decay: decoupled x <- x - gamma d lambda x, else L2."""
    b1, b2 = betas
    b3 = math.sqrt(b2) if beta3 is None else beta3
    d, k = group.get("d", d0), group.get("k", 0)
    gamma = lr * (math.sqrt(1 - b2 ** (k + 1)) / (1 - b1 ** (k + 1)) if use_bias_correction else 1.0)
    r = b3 * group.get("r", 0.0)
    s_norm, new = 0.0, []
    for p, g, st in zip(ps, gs, states):
        g = -g if maximize else g
        if weight_decay != 0 and not decouple:
            g = g + weight_decay * p
        x0 = st.setdefault("p0", p.copy())
        r += (1 - b3) * gamma * d * d * float(np.dot(g.ravel(), (x0 - p).ravel()))
        s = b3 * st.get("s", np.zeros_like(p)) + (1 - b3) * (1.0 if safeguard_warmup else gamma) * d * d * g
        m = b1 * st.get("exp_avg", np.zeros_like(p)) + (1 - b1) * d * g
        v = b2 * st.get("exp_avg_sq", np.zeros_like(p)) + (1 - b2) * d * d * g * g
        st["s"], st["exp_avg"], st["exp_avg_sq"] = s, m, v
        s_norm += float(np.abs(s).sum())
        step = gamma * d * (m if b1 > 0 else d * g) / (np.sqrt(v) + d * eps)
        new.append(p - step - (gamma * d * weight_decay * p if decouple else 0.0))
    d_hat = d_coef * r / s_norm
    d_max = max(group.get("d_max", d0), d_hat)
    group.update(r=r, d_max=d_max, k=k + 1,
                 d=min(d_max, (max(d, d_hat) if d == d0 else d) * growth_rate))
    return new


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


def lion(p, g, state, *, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, maximize=False, **_):
    """Chen et al. 2023, Program 1: update = sign(interp(g, m, b1)) + wd * w;
    w <- w - lr * update;  m <- interp(g, m, b2), with interp(g, m, b) = b m + (1 - b) g."""
    b1, b2 = betas
    g = -g if maximize else g
    m = state.get("exp_avg", np.zeros_like(p))
    update = np.sign(b1 * m + (1.0 - b1) * g) + weight_decay * p
    state["exp_avg"] = b2 * m + (1.0 - b2) * g
    return p - lr * update


#: torch.optim class name (for entries with a torch twin) or registry name -> reference rule
RULES = {
    "SGD": sgd, "Adagrad": adagrad, "RMSprop": rmsprop, "Adadelta": adadelta, "Adam": adam,
    "AdamW": adamw, "Adamax": adamax, "NAdam": nadam, "Adafactor": adafactor,
    "adabelief": adabelief, "adan": adan,
    "schedule_free_adamw": schedule_free_adamw, "schedule_free_sgd": schedule_free_sgd,
    "RAdam": radam, "Rprop": rprop, "ASGD": asgd, "lion": lion,
}


def prodigy_alone(p, g, state, **hp):
    """:func:`prodigy` for a parameter alone in its param group (the parity problem's two
    groups), keeping the group's d, r and k in the parameter's own state."""
    return prodigy([p], [g], [state], state.setdefault("group", {}), **hp)[0]


# optimizers without a torch.optim twin, by registry name
RULES.update({"lamb": lamb, "lars": lars, "prodigy": prodigy_alone})


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


# --------------------------------------------------------------------------------- L-BFGS
def _cubic_min(a, b, lo, hi):
    """Minimizer of the cubic through points a, b = (t, f, f'), clipped to [lo, hi]
    (Nocedal & Wright eq. 3.59); the midpoint when the cubic has no minimizer."""
    (t1, f1, d1_), (t2, f2, d2_) = (a, b) if a[0] <= b[0] else (b, a)
    d1 = d1_ + d2_ - 3.0 * (f1 - f2) / (t1 - t2)
    disc = d1 * d1 - d1_ * d2_
    if disc < 0:
        return (lo + hi) / 2.0
    d2 = math.sqrt(disc)
    t = t2 - (t2 - t1) * (d2_ + d2 - d1) / (d2_ - d1_ + 2.0 * d2)
    return min(max(t, lo), hi)


def _line_search(phi, f0, g0, dphi0, t, d_max, c1=1e-4, c2=0.9, tol=1e-9, max_ls=25):
    """Strong-Wolfe line search: Nocedal & Wright Algorithm 3.5 (bracketing, with cubic
    extrapolation into [t + 0.01 (t - t_prev), 10 t]) and Algorithm 3.6 (zoom, by cubic
    interpolation kept 10% inside the bracket when it stalls), minFunc's safeguards.
    ``phi(t) -> (f, g, g.d)``; returns (t, f, g, evaluations)."""
    def sufficient(t, f):
        return f <= f0 + c1 * t * dphi0

    def curvature(dphi):
        return abs(dphi) <= -c2 * dphi0

    prev = (0.0, f0, g0, dphi0)
    cur = (t, *phi(t))
    n, it = 1, 0
    bracket = None
    while it < max_ls:
        if not sufficient(cur[0], cur[1]) or (it > 1 and cur[1] >= prev[1]):
            bracket = [prev, cur]
            break
        if curvature(cur[3]):
            return cur[0], cur[1], cur[2], n
        if cur[3] >= 0:
            bracket = [prev, cur]
            break
        t_new = _cubic_min((prev[0], prev[1], prev[3]), (cur[0], cur[1], cur[3]),
                           cur[0] + 0.01 * (cur[0] - prev[0]), 10.0 * cur[0])
        prev, cur = cur, (t_new, *phi(t_new))
        n, it = n + 1, it + 1
    if bracket is None:
        bracket = [(0.0, f0, g0, None), cur]
    # zoom: lo = the end with the lower f (the first on ties), hi the other
    lo, hi = (0, 1) if bracket[0][1] <= bracket[1][1] else (1, 0)
    stalled = False
    while it < max_ls:
        a, b = bracket
        width = abs(b[0] - a[0])
        if width * d_max < tol:
            break
        left, right = min(a[0], b[0]), max(a[0], b[0])
        t = _cubic_min((a[0], a[1], a[3]), (b[0], b[1], b[3]), left, right)
        margin = 0.1 * (right - left)
        if min(right - t, t - left) < margin:
            if stalled or t >= right or t <= left:
                t = right - margin if abs(t - right) < abs(t - left) else left + margin
                stalled = False
            else:
                stalled = True
        else:
            stalled = False
        new = (t, *phi(t))
        n, it = n + 1, it + 1
        if not sufficient(t, new[1]) or new[1] >= bracket[lo][1]:
            bracket[hi] = new
            lo, hi = (0, 1) if bracket[0][1] <= bracket[1][1] else (1, 0)
            continue
        found = curvature(new[3])
        if not found and new[3] * (bracket[hi][0] - bracket[lo][0]) >= 0:
            bracket[hi] = bracket[lo]
        bracket[lo] = new
        if found:
            break
    best = bracket[lo]
    return best[0], best[1], best[2], n


def lbfgs_step(fg, x, state, *, lr=1.0, max_iter=20, max_eval=None, tolerance_grad=1e-7,
               tolerance_change=1e-9, history_size=100, line_search_fn=None):
    """One ``torch.optim.LBFGS.step``: up to ``max_iter`` iterations of L-BFGS (Nocedal &
    Wright Algorithm 7.5, direction by the two-loop recursion of Algorithm 7.4, initial
    Hessian gamma I with gamma = s.y / y.y, eq. 7.20; pairs with y.s <= 1e-10 skipped) on
    ``fg(x) -> (f, g)``. ``state`` persists across steps (pairs, last d and t, previous g
    and f). Returns the new x."""
    max_eval = max_iter * 5 // 4 if max_eval is None else max_eval
    state.setdefault("n_iter", 0)
    f, g = fg(x)
    evals = 1
    if np.abs(g).max() <= tolerance_grad:
        return x
    for k in range(1, max_iter + 1):
        state["n_iter"] += 1
        if state["n_iter"] == 1:
            d, state["pairs"], state["gamma"] = -g, [], 1.0
        else:
            y, s = g - state["prev_g"], state["t"] * state["d"]
            if y @ s > 1e-10:
                state["pairs"] = (state["pairs"] + [(s, y, 1.0 / (y @ s))])[-history_size:]
                state["gamma"] = (y @ s) / (y @ y)
            q, alphas = -g, []
            for s_i, y_i, rho_i in reversed(state["pairs"]):
                alphas.append(rho_i * (s_i @ q))
                q = q - alphas[-1] * y_i
            r = state["gamma"] * q
            for (s_i, y_i, rho_i), a_i in zip(state["pairs"], reversed(alphas)):
                r = r + (a_i - rho_i * (y_i @ r)) * s_i
            d = r
        state["prev_g"], state["prev_f"] = g, f
        t = min(1.0, 1.0 / np.abs(g).sum()) * lr if state["n_iter"] == 1 else lr
        state["d"], state["t"] = d, t
        gtd = g @ d
        if gtd > -tolerance_change:
            break
        if line_search_fn == "strong_wolfe":
            def phi(t_):
                f_, g_ = fg(x + t_ * d)
                return f_, g_, g_ @ d
            t, f, g, n = _line_search(phi, f, g, gtd, t, np.abs(d).max(), max_ls=max_eval - evals)
            state["t"] = t
            x = x + t * d
            optimal = np.abs(g).max() <= tolerance_grad
        else:
            x, n, optimal = x + t * d, 0, False
            if k != max_iter:
                f, g = fg(x)
                n, optimal = 1, np.abs(g).max() <= tolerance_grad
        evals += n
        if k == max_iter or evals >= max_eval or optimal:
            break
        if np.abs(t * d).max() <= tolerance_change or abs(f - state["prev_f"]) < tolerance_change:
            break
    return x
