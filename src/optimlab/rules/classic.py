"""The classic family: SGD (momentum, Nesterov), Adagrad, RMSprop, Adadelta, Adam (AMSGrad), AdaMax, NAdam."""

from __future__ import annotations

from .._math import abs_, in_place_mul, maximum, sqrt
from .base import Rule


def sgd(g, s, h):
    """SGD with optional (Nesterov) momentum, in torch.optim's convention.

        b_t = mu * b_{t-1} + (1 - dampening) * g_t      (b_1 = g_1)
        u_t = g_t + mu * b_t   if nesterov   else   b_t

    Robbins & Monro 1951; Polyak 1964 (heavy ball); Sutskever et al. 2013 (Nesterov form).
    """
    if h.momentum != 0:
        if s.momentum_buffer is None:
            s.momentum_buffer = g
        else:
            s.momentum_buffer = h.momentum * s.momentum_buffer + (1 - h.dampening) * g
        if h.nesterov:
            return g + h.momentum * s.momentum_buffer
        return s.momentum_buffer
    return g


def adagrad(g, s, h):
    """Adagrad: per-coordinate steps shrink with the sum of squared gradients.

        G_t = G_{t-1} + g_t^2
        u_t = g_t / (sqrt(G_t) + eps) / (1 + (t - 1) * lr_decay)

    Duchi, Hazan & Singer 2011, "Adaptive Subgradient Methods", eq. (1) diagonal form.
    """
    s.step = s.step + 1
    s.sum = s.sum + g * g
    return g / (sqrt(s.sum) + h.eps) / (1 + (s.step - 1) * h.lr_decay)


def rmsprop(g, s, h):
    """RMSprop: divide by a running root-mean-square of recent gradients.

        v_t = alpha * v_{t-1} + (1 - alpha) * g_t^2
        centered:  m_t = alpha * m_{t-1} + (1 - alpha) * g_t,   d_t = sqrt(v_t - m_t^2) + eps
        otherwise: d_t = sqrt(v_t) + eps
        u_t = g_t / d_t,   or with momentum  b_t = mu * b_{t-1} + g_t / d_t,  u_t = b_t

    Tieleman & Hinton 2012, Coursera lecture 6.5; centered form: Graves 2013, eq. (38)-(45).
    """
    s.step = s.step + 1
    s.square_avg = h.alpha * s.square_avg + (1 - h.alpha) * g * g
    if h.centered:
        s.grad_avg = h.alpha * s.grad_avg + (1 - h.alpha) * g
        avg = sqrt(s.square_avg - s.grad_avg * s.grad_avg) + h.eps
    else:
        avg = sqrt(s.square_avg) + h.eps
    if h.momentum > 0:
        s.momentum_buffer = h.momentum * s.momentum_buffer + g / avg
        return s.momentum_buffer
    return g / avg


def adadelta(g, s, h):
    """Adadelta: the step is the ratio of two running RMS values, so units match.

        E[g^2]_t  = rho * E[g^2]_{t-1} + (1 - rho) * g_t^2
        dx_t      = sqrt(E[dx^2]_{t-1} + eps) / sqrt(E[g^2]_t + eps) * g_t
        E[dx^2]_t = rho * E[dx^2]_{t-1} + (1 - rho) * dx_t^2
        u_t = dx_t          (lr = 1.0 recovers the paper)

    Zeiler 2012, "ADADELTA: An Adaptive Learning Rate Method", Algorithm 1.
    """
    s.step = s.step + 1
    s.square_avg = h.rho * s.square_avg + (1 - h.rho) * g * g
    delta = sqrt(s.acc_delta + h.eps) / sqrt(s.square_avg + h.eps) * g
    s.acc_delta = h.rho * s.acc_delta + (1 - h.rho) * delta * delta
    return delta


def adam(g, s, h):
    """Adam (and AMSGrad, and AdamW through the engine's decoupled weight decay).

        m_t = beta1 * m_{t-1} + (1 - beta1) * g_t
        v_t = beta2 * v_{t-1} + (1 - beta2) * g_t^2
        amsgrad: v_t <- max(v_max_{t-1}, v_t)
        u_t = m_t / (1 - beta1^t)  /  (sqrt(v_t) / sqrt(1 - beta2^t) + eps)

    With ``bias_correction=False`` the two ``1 - beta^t`` factors are dropped.
    Kingma & Ba 2015, Algorithm 1; AMSGrad: Reddi, Kale & Kumar 2018, Algorithm 2.
    """
    beta1, beta2 = h.betas
    s.step = s.step + 1
    s.exp_avg = beta1 * s.exp_avg + (1 - beta1) * g
    s.exp_avg_sq = beta2 * s.exp_avg_sq + (1 - beta2) * g * g
    v = s.exp_avg_sq
    if h.amsgrad:
        s.max_exp_avg_sq = maximum(s.max_exp_avg_sq, s.exp_avg_sq)
        v = s.max_exp_avg_sq
    if not h.bias_correction:
        return s.exp_avg / (sqrt(v) + h.eps)
    bias_correction1 = 1 - beta1**s.step
    bias_correction2 = 1 - beta2**s.step
    return (s.exp_avg / bias_correction1) / (sqrt(v) / sqrt(bias_correction2) + h.eps)


def adamax(g, s, h):
    """AdaMax: Adam with the infinity norm in place of the second moment.

        m_t = beta1 * m_{t-1} + (1 - beta1) * g_t
        u_t = max(beta2 * u_{t-1}, |g_t| + eps)
        step = m_t / (1 - beta1^t) / u_t

    Kingma & Ba 2015, Section 7.1, Algorithm 2 (eps inside the max, as torch.optim).
    """
    beta1, beta2 = h.betas
    s.step = s.step + 1
    s.exp_avg = beta1 * s.exp_avg + (1 - beta1) * g
    s.exp_inf = maximum(beta2 * s.exp_inf, abs_(g) + h.eps)
    if not h.bias_correction:
        return s.exp_avg / s.exp_inf
    return s.exp_avg / (1 - beta1**s.step) / s.exp_inf


def nadam(g, s, h):
    """NAdam: Adam with Nesterov momentum and a warming momentum schedule.

        mu_t  = beta1 * (1 - 0.5 * 0.96^(t * psi))          psi = momentum_decay
        m_t   = beta1 * m_{t-1} + (1 - beta1) * g_t
        v_t   = beta2 * v_{t-1} + (1 - beta2) * g_t^2
        d_t   = sqrt(v_t / (1 - beta2^t)) + eps
        u_t   = (1 - mu_t) / (1 - prod_{i<=t} mu_i) * g_t / d_t
              + mu_{t+1} / (1 - prod_{i<=t+1} mu_i) * m_t / d_t

    With ``bias_correction=False`` the products and ``1 - beta2^t`` are dropped.
    Dozat 2016, "Incorporating Nesterov Momentum into Adam", Algorithm 2.
    """
    beta1, beta2 = h.betas
    s.step = s.step + 1
    mu = beta1 * (1 - 0.5 * 0.96 ** (s.step * h.momentum_decay))
    mu_next = beta1 * (1 - 0.5 * 0.96 ** ((s.step + 1) * h.momentum_decay))
    # torch: ``mu_product *= mu`` on the 0-dim state, rounded to its dtype (float32 by default)
    s.mu_product = in_place_mul(s.mu_product, mu)
    s.exp_avg = beta1 * s.exp_avg + (1 - beta1) * g
    s.exp_avg_sq = beta2 * s.exp_avg_sq + (1 - beta2) * g * g
    if not h.bias_correction:
        denom = sqrt(s.exp_avg_sq) + h.eps
        return (1 - mu) * g / denom + mu_next * s.exp_avg / denom
    denom = sqrt(s.exp_avg_sq / (1 - beta2**s.step)) + h.eps
    return (1 - mu) / (1 - s.mu_product) * g / denom + mu_next / (
        1 - s.mu_product * mu_next
    ) * s.exp_avg / denom


SGD = Rule(sgd, lambda h: {"momentum_buffer": None} if h.momentum != 0 else {}, sparse_ok=True)
ADAGRAD = Rule(adagrad, lambda h: {"sum": h.initial_accumulator_value}, {"step": 0.0}, sparse_ok=True)
RMSPROP = Rule(
    rmsprop,
    lambda h: {"square_avg": 0.0}
    | ({"momentum_buffer": 0.0} if h.momentum > 0 else {})
    | ({"grad_avg": 0.0} if h.centered else {}),
    {"step": 0.0},
)
ADADELTA = Rule(adadelta, lambda h: {"square_avg": 0.0, "acc_delta": 0.0}, {"step": 0.0})
ADAM = Rule(
    adam,
    lambda h: {"exp_avg": 0.0, "exp_avg_sq": 0.0} | ({"max_exp_avg_sq": 0.0} if h.amsgrad else {}),
    {"step": 0.0},
)
ADAMAX = Rule(adamax, lambda h: {"exp_avg": 0.0, "exp_inf": 0.0}, {"step": 0.0})
NADAM = Rule(nadam, lambda h: {"exp_avg": 0.0, "exp_avg_sq": 0.0}, {"step": 0.0, "mu_product": 1.0})

ALL_RULES = (SGD, ADAGRAD, RMSPROP, ADADELTA, ADAM, ADAMAX, NADAM)
