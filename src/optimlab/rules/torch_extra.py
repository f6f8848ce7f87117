"""The rest of torch.optim's element-wise optimizers: RAdam, Rprop, ASGD."""

from __future__ import annotations

from .._math import as_default_dtype, clamp, maximum, sign, sqrt, where
from .base import Rule


def radam(g, s, h):
    """RAdam: Adam whose adaptive step is switched on, rectified, once the variance of
    the adaptive learning rate is tractable.

        m_t = beta1 * m_{t-1} + (1 - beta1) * g_t
        v_t = beta2 * v_{t-1} + (1 - beta2) * g_t^2
        rho_inf = 2 / (1 - beta2) - 1
        rho_t   = rho_inf - 2 t beta2^t / (1 - beta2^t)
        r_t     = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
        u_t = m_t / (1 - beta1^t) * r_t * sqrt(1 - beta2^t) / (sqrt(v_t) + eps)   if rho_t > 5
              m_t / (1 - beta1^t)                                                    otherwise

    Liu et al. 2020, "On the Variance of the Adaptive Learning Rate and Beyond", Algorithm 2
    (eps added as torch.optim does; ``decoupled_weight_decay``: RAdamW, by the engine).
    """
    beta1, beta2 = h.betas
    s.step = s.step + 1
    s.exp_avg = beta1 * s.exp_avg + (1 - beta1) * g
    s.exp_avg_sq = beta2 * s.exp_avg_sq + (1 - beta2) * g * g
    bias_correction1 = 1 - beta1**s.step
    bias_correction2 = 1 - beta2**s.step
    m_hat = s.exp_avg / bias_correction1
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * s.step * beta2**s.step / bias_correction2
    # computed for both branches of the where below, so kept from dividing by zero where it
    # is not used (rho_inf = 4 for beta2 = 0.6); NaN there while rho_t is in (2, 4)
    rectifiable = rho_t > 5
    rect = sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                / where(rectifiable, (rho_inf - 4) * (rho_inf - 2) * rho_t, 1.0))
    adaptive_lr = sqrt(bias_correction2) / (sqrt(s.exp_avg_sq) + h.eps)
    return where(rectifiable, m_hat * adaptive_lr * rect, m_hat)


def rprop(p, g, s, h):
    """Rprop: a step size per weight, grown while the gradient keeps its sign and shrunk
    when it flips; only the sign of the gradient is used. A whole-step rule: ``lr`` is
    only the initial step size.

        d     = sign(g_t * g_{t-1})
        D_t   = clamp(D_{t-1} * (eta+ if d > 0, eta- if d < 0, 1 if d = 0), D_min, D_max)
        g_t  <- 0 where d < 0                    (no step, and no sign flip next time)
        p_t   = p_{t-1} - sign(g_t) * D_t

    Riedmiller & Braun 1993, "A Direct Adaptive Method for Faster Backpropagation Learning:
    The RPROP Algorithm", without weight-backtracking, as torch.optim.
    """
    etaminus, etaplus = h.etas
    step_size_min, step_size_max = h.step_sizes
    s.step = s.step + 1
    d = sign(g * s.prev)
    # torch's factor: eta+ / eta- / 1 by the sign, and sign(NaN) = 0 gives 1
    factor = where(d > 0, etaplus, where(d < 0, etaminus, where(d == 0, 1.0, d)))
    s.step_size = clamp(s.step_size * factor, step_size_min, step_size_max)
    g = where(d < 0, 0.0, g)
    s.prev = g
    return p - sign(g) * s.step_size


def asgd(p, g, s, h):
    """ASGD: SGD with a decaying step ``eta_t`` and Polyak-Ruppert averaging of the iterates
    (the average ``ax`` starts at step ``t0``). A whole-step rule: the step is ``eta``.

        p_t   = p_{t-1} * (1 - lambd * eta_t) - eta_t * g_t
        ax_t  = ax_{t-1} + mu_t * (p_t - ax_{t-1})          (ax_t = p_t while mu_t = 1)
        eta_{t+1} = lr / (1 + lambd * lr * t)^alpha
        mu_{t+1}  = 1 / max(1, t - t0)

    Polyak & Juditsky 1992, "Acceleration of Stochastic Approximation by Averaging";
    schedule and decay term of Bottou 2012, "Stochastic Gradient Descent Tricks", as torch.optim.
    """
    s.step = s.step + 1
    p = p * (1 - h.lambd * s.eta) - s.eta * g
    s.ax = where(s.mu != 1, s.ax + (p - s.ax) * s.mu, p)
    # torch writes eta and mu through a tensor of the default dtype, whatever their own
    s.eta = as_default_dtype(h.lr / (1 + h.lambd * h.lr * s.step) ** h.alpha)
    s.mu = as_default_dtype(1 / maximum(1, s.step - h.t0))
    return p


RADAM = Rule(radam, lambda h: {"exp_avg": 0.0, "exp_avg_sq": 0.0}, {"step": 0.0})
RPROP = Rule(rprop, lambda h: {"prev": 0.0, "step_size": h.lr}, {"step": 0.0}, whole_step=True)
ASGD = Rule(asgd, lambda h: {"ax": 0.0}, {"step": 0.0, "eta": lambda h: h.lr, "mu": 1.0}, whole_step=True)

ALL_RULES = (RADAM, RPROP, ASGD)
