"""SparseAdam: Adam on the rows a sparse gradient touches, dense state (``torch.optim.SparseAdam``).

There is no second copy of Adam here: each step gathers the touched entries of the
parameter and of ``exp_avg``/``exp_avg_sq``, runs :func:`optimlab.rules.update` with the
Adam rule on them, and scatters the results back. Entries the gradient does not touch
keep their parameter *and* their moments (no decay), which is what makes it "sparse".
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch.optim import Optimizer

from . import rules


def _item(x):
    return x.item() if isinstance(x, torch.Tensor) else x


class SparseAdam(Optimizer):
    """Adam for sparse gradients (``nn.Embedding(sparse=True)``), with dense state.

    For the entries ``i`` present in the (coalesced) sparse gradient, at step ``t`` of the
    parameter::

        m_i <- beta1 * m_i + (1 - beta1) * g_i
        v_i <- beta2 * v_i + (1 - beta2) * g_i^2
        p_i <- p_i - lr * sqrt(1 - beta2^t) / (1 - beta1^t) * m_i / (sqrt(v_i) + eps)

    Every other entry of ``p``, ``m`` and ``v`` is left as it is. ``t`` counts the steps in
    which the parameter had a gradient. Note ``eps`` is added before the bias corrections,
    unlike :class:`optimlab.Adam`; it is Adam's rule with ``eps / sqrt(1 - beta2^t)``.

    Arguments as ``torch.optim.SparseAdam``: ``lr=1e-3 > 0``, ``betas=(0.9, 0.999)`` each
    in [0, 1), ``eps=1e-8 > 0``, ``maximize=False``. Parameters must be dense and real;
    gradients must be sparse (use :class:`optimlab.Adam` for dense ones). State keys:
    ``step`` (a Python int), ``exp_avg``, ``exp_avg_sq``, as torch's.

    Kingma & Ba 2015 (Adam), restricted to the gradient's nonzero entries as torch.optim does.

    >>> emb = torch.nn.Embedding(10_000, 64, sparse=True)
    >>> opt = optimlab.SparseAdam(emb.parameters(), lr=1e-3)
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, maximize=False):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 < lr:
            raise ValueError(f"Invalid learning rate: {lr} (lr must be > 0)")
        if not 0.0 < eps:
            raise ValueError(f"Invalid epsilon value: {eps} (eps must be > 0)")
        for i in range(2):
            if not 0.0 <= betas[i] < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {betas[i]} (must be in [0, 1))")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "maximize": maximize})
        sparse = [[i, j] for i, group in enumerate(self.param_groups)
                  for j, p in enumerate(group["params"]) if p.is_sparse]
        if sparse:
            raise ValueError(f"Sparse params at indices {sparse}: SparseAdam requires dense parameter tensors")
        complex_ = [[i, j] for i, group in enumerate(self.param_groups)
                    for j, p in enumerate(group["params"]) if p.is_complex()]
        if complex_:
            raise ValueError(f"Complex params at indices {complex_}: SparseAdam does not support complex parameters")

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step; returns the closure's loss, if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            h = SimpleNamespace(lr=_item(group["lr"]), betas=tuple(map(_item, group["betas"])),
                                eps=group["eps"], maximize=group.get("maximize", False),
                                weight_decay=0, decoupled_weight_decay=False, grad_scale=None,
                                amsgrad=False, bias_correction=True)
            for p in group["params"]:
                if p.grad is not None:
                    self._step_param(p, h, group["eps"])
        return loss

    def _step_param(self, p, h, eps):
        if not p.grad.is_sparse:
            raise RuntimeError("SparseAdam does not support dense gradients, please consider Adam instead")
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        for key in ("exp_avg", "exp_avg_sq"):  # a checkpoint of another param: torch's error
            if state[key].shape != p.grad.shape:
                raise RuntimeError("sparse_mask(): operands have incompatible sizes; self has size "
                                   f"{list(state[key].shape)} but mask has size {list(p.grad.shape)}")
        state["step"] += 1
        grad = p.grad.coalesce()  # unique indices: the update is not linear in g
        if grad._values().numel() == 0:
            return
        rows = tuple(grad._indices())
        t = state["step"]
        s = SimpleNamespace(step=t - 1, exp_avg=state["exp_avg"][rows],
                            exp_avg_sq=state["exp_avg_sq"][rows])
        # torch adds eps to sqrt(v) before dividing by sqrt(1 - beta2^t): Adam's eps, rescaled
        h.eps = eps / math.sqrt(1 - h.betas[1] ** t)
        p[rows] = rules.update(rules.adam, p[rows], grad._values(), s, h)
        state["exp_avg"][rows] = s.exp_avg
        state["exp_avg_sq"][rows] = s.exp_avg_sq
