"""L-BFGS with an optional strong-Wolfe line search, exactly as ``torch.optim.LBFGS``.

L-BFGS has no per-element rule: its direction comes from inner products over the whole
parameter vector, so it is its own class. The pieces, each next to its algorithm box in
Nocedal & Wright, *Numerical Optimization* (2nd ed., 2006):

* :func:`two_loop` — the L-BFGS two-loop recursion, Algorithm 7.4;
* :meth:`LBFGS.step` — the outer iteration, Algorithm 7.5 (curvature pairs are kept only
  when ``y.s > 1e-10``; the initial Hessian is ``gamma I`` with ``gamma = s.y / y.y``, eq. 7.20);
* :func:`strong_wolfe` — the line search, Algorithm 3.5 (bracketing) and 3.6 (zoom), with
  the safeguarded cubic step of :func:`cubic_minimizer` (eq. 3.59), as minFunc does.

Every operation is the one torch.optim performs, in the same order and on the same
kinds of values (0-dim tensors where torch has them), so the trajectories agree to the
last bits and state_dicts load both ways. Names in ``state`` are torch's: ``old_stps``
are N&W's ``s_k = x_{k+1} - x_k``, ``old_dirs`` the ``y_k = g_{k+1} - g_k``, ``ro`` the
``rho_k = 1 / (y_k . s_k)``, ``H_diag`` the ``gamma_k``.
"""

from __future__ import annotations

import inspect

import torch
from torch.optim import Optimizer

__all__ = ["LBFGS", "two_loop", "strong_wolfe", "cubic_minimizer"]


#: torch.optim.LBFGS takes ``maximize`` from torch 2.14 on; before, its checkpoints lack the key
TORCH_HAS_MAXIMIZE = "maximize" in inspect.signature(torch.optim.LBFGS).parameters


def _float(loss) -> float:
    return float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)


def cubic_minimizer(x1, f1, g1, x2, f2, g2, bounds=None):
    """The minimizer of the cubic through (x1, f1, f'=g1) and (x2, f2, f'=g2), clipped to
    ``bounds`` (default: the interval between x1 and x2); its midpoint if the cubic has none.

        d1 = g1 + g2 - 3 (f1 - f2) / (x1 - x2)
        d2 = sqrt(d1^2 - g1 g2)
        x  = x2 - (x2 - x1) (g2 + d2 - d1) / (g2 - g1 + 2 d2)          (x1 <= x2)

    Nocedal & Wright eq. (3.59); minFunc's ``polyinterp``.
    """
    lo, hi = bounds if bounds is not None else ((x1, x2) if x1 <= x2 else (x2, x1))
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    if d2_square < 0:
        return (lo + hi) / 2.0
    d2 = d2_square.sqrt()
    if x1 <= x2:
        x = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        x = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    return min(max(x, lo), hi)


def strong_wolfe(evaluate, t, d, f, g, gtd, c1=1e-4, c2=0.9, tolerance_change=1e-9, max_ls=25):
    """A step ``t`` along ``d`` satisfying the strong Wolfe conditions

        f(x + t d) <= f(x) + c1 t g.d                  (sufficient decrease)
        |g(x + t d).d| <= c2 |g.d|                       (curvature)

    ``evaluate(t) -> (f, g)`` at ``x + t d``; ``f, g, gtd`` are the values at t = 0.
    Returns ``(f_new, g_new, t, evaluations)``. Phase 1 (N&W Algorithm 3.5) grows t by cubic
    extrapolation until an interval is bracketed; phase 2 (Algorithm 3.6, "zoom") shrinks it
    by cubic interpolation, kept 10% away from the ends when progress stalls. At most
    ``max_ls`` evaluations after the first.
    """
    d_norm = d.abs().max()
    f_new, g_new = evaluate(t)
    evals = 1
    gtd_new = g_new.dot(d)

    # Phase 1: bracket. A bracket is two points [t, f, g, g.d]; one point when t is done.
    prev = [0, f, g, gtd]
    done = False
    ls_iter = 0
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= prev[1]):
            bracket = [prev, [t, f_new, g_new, gtd_new]]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, done = [[t, f_new, g_new, gtd_new]], True
            break
        if gtd_new >= 0:
            bracket = [prev, [t, f_new, g_new, gtd_new]]
            break
        # extrapolate: a cubic step in [t + 0.01 (t - t_prev), 10 t]
        t_next = cubic_minimizer(prev[0], prev[1], prev[3], t, f_new, gtd_new,
                                 bounds=(t + 0.01 * (t - prev[0]), t * 10))
        prev = [t, f_new, g_new, gtd_new]
        t = t_next
        f_new, g_new = evaluate(t)
        evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1
    if ls_iter == max_ls:
        bracket = [[0, f, g, None], [t, f_new, g_new, None]]

    # Phase 2: zoom. low is the bracket's point with the lower f, high the other.
    low, high = (0, 1) if bracket[0][1] <= bracket[-1][1] else (1, 0)
    insufficient_progress = False
    while not done and ls_iter < max_ls:
        t_lo, t_hi = min(bracket[0][0], bracket[1][0]), max(bracket[0][0], bracket[1][0])
        if abs(bracket[1][0] - bracket[0][0]) * d_norm < tolerance_change:
            break  # the bracket is too small to matter
        (ta, fa, _, ga), (tb, fb, _, gb) = bracket
        t = cubic_minimizer(ta, fa, ga, tb, fb, gb)
        # Safeguard: a trial within 10% of the bracket's ends counts as little progress;
        # twice in a row (or outside the bracket), move it to 10% in from the nearer end.
        eps = 0.1 * (t_hi - t_lo)
        if min(t_hi - t, t - t_lo) < eps:
            if insufficient_progress or t >= t_hi or t <= t_lo:
                t = t_hi - eps if abs(t - t_hi) < abs(t - t_lo) else t_lo + eps
                insufficient_progress = False
            else:
                insufficient_progress = True
        else:
            insufficient_progress = False

        f_new, g_new = evaluate(t)
        evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1
        point = [t, f_new, g_new, gtd_new]
        if f_new > (f + c1 * t * gtd) or f_new >= bracket[low][1]:
            # no sufficient decrease, or not below the low end: t becomes the high end
            bracket[high] = point
            low, high = (0, 1) if bracket[0][1] <= bracket[1][1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high][0] - bracket[low][0]) >= 0:
                bracket[high] = bracket[low]  # the minimum lies between t and the old low
            bracket[low] = point

    t, f_new, g_new, _ = bracket[low]
    return f_new, g_new, t, evals


def two_loop(grad, old_stps, old_dirs, ro, H_diag, al):
    """The L-BFGS direction ``-H_k grad`` from the stored pairs (N&W Algorithm 7.4).

        q = -grad
        for i = k-1 .. k-m:   a_i = rho_i s_i.q;   q <- q - a_i y_i
        r = gamma q
        for i = k-m .. k-1:   b = rho_i y_i.r;     r <- r + (a_i - b) s_i

    ``al`` is scratch space for the ``a_i`` (torch keeps it in the state as ``al``).
    """
    q = grad.neg()
    for i in range(len(old_dirs) - 1, -1, -1):
        al[i] = old_stps[i].dot(q) * ro[i]
        q.add_(old_dirs[i], alpha=-al[i])
    r = torch.mul(q, H_diag)
    for i in range(len(old_dirs)):
        be_i = old_dirs[i].dot(r) * ro[i]
        r.add_(old_stps[i], alpha=al[i] - be_i)
    return r


class LBFGS(Optimizer):
    """L-BFGS (Liu & Nocedal 1989) with an optional strong-Wolfe line search.

    One :meth:`step` runs up to ``max_iter`` iterations of

        d_k = -H_k g_k                 (two-loop recursion over the last ``history_size`` pairs)
        x_{k+1} = x_k + t_k d_k        (t_k = lr, or the strong-Wolfe step starting from lr;
                                        the first iteration starts from min(1, 1/|g|_1) lr)

    and stops early when ``max|g| <= tolerance_grad``, ``max|t d| <= tolerance_change``, the
    loss changes by less than ``tolerance_change``, ``g.d > -tolerance_change``, or after
    ``max_eval`` evaluations of ``closure``. ``step(closure)`` needs a closure that clears
    the grads, computes the loss, calls ``backward()`` and returns the loss.

    Arguments as ``torch.optim.LBFGS``: ``lr=1``, ``max_iter=20``, ``max_eval=max_iter*5//4``,
    ``tolerance_grad=1e-7``, ``tolerance_change=1e-9``, ``history_size=100``,
    ``line_search_fn=None`` or ``"strong_wolfe"``, and, keyword-only, ``maximize=False`` (as
    torch >= 2.14: the search runs on -f, so the state holds -g). One param group only. The (global) state
    sits under the first parameter with torch's keys (``func_evals``, ``n_iter``, ``d``, ``t``,
    ``old_dirs``, ``old_stps``, ``ro``, ``H_diag``, ``prev_flat_grad``, ``prev_loss``, ``al``).
    Unlike torch, nonsense values (``max_iter < 1``, ``history_size < 1``, an unknown
    ``line_search_fn``) are rejected at construction rather than failing in ``step``.

    Nocedal & Wright 2006, Algorithms 7.4, 7.5, 3.5, 3.6.

    >>> opt = optimlab.LBFGS(model.parameters(), line_search_fn="strong_wolfe")
    >>> def closure():
    ...     opt.zero_grad(); loss = loss_fn(model(x), y); loss.backward(); return loss
    >>> opt.step(closure)
    """

    def __init__(self, params, lr=1, max_iter=20, max_eval=None, tolerance_grad=1e-7,
                 tolerance_change=1e-9, history_size=100, line_search_fn=None, *, maximize=False):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr} (lr must be >= 0)")
        if not max_iter >= 1:
            raise ValueError(f"Invalid max_iter value: {max_iter} (max_iter must be >= 1)")
        if not history_size >= 1:
            raise ValueError(f"Invalid history_size value: {history_size} (history_size must be >= 1)")
        for name, value in (("tolerance_grad", tolerance_grad), ("tolerance_change", tolerance_change)):
            if not 0.0 <= value:
                raise ValueError(f"Invalid {name} value: {value} ({name} must be >= 0)")
        if line_search_fn not in (None, "strong_wolfe"):
            raise ValueError(f"only 'strong_wolfe' is supported (line_search_fn must be None or "
                             f"'strong_wolfe', got {line_search_fn!r})")
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        defaults = {"lr": lr, "max_iter": max_iter, "max_eval": max_eval,
                    "tolerance_grad": tolerance_grad, "tolerance_change": tolerance_change,
                    "history_size": history_size, "line_search_fn": line_search_fn,
                    "maximize": maximize}
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        self._params = self.param_groups[0]["params"]

    def state_dict(self):
        """torch's format for the installed torch: ``maximize=False`` is left out where
        torch.optim.LBFGS has no ``maximize`` (before 2.14), so DCP loads either way."""
        state_dict = super().state_dict()
        if not TORCH_HAS_MAXIMIZE:
            for group in state_dict["param_groups"]:
                if group.get("maximize") is False:
                    del group["maximize"]
        return state_dict

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # a checkpoint from before torch 2.14 has no maximize
            group.setdefault("maximize", False)

    # ----------------------------------------------------- the parameters as one flat vector

    def _flat_grad(self):
        views = []
        for p in self._params:
            if p.grad is None:
                view = p.new(p.numel()).zero_()
            elif p.grad.is_sparse:
                view = p.grad.to_dense().view(-1)
            else:
                view = p.grad.view(-1)
            views.append(torch.view_as_real(view).view(-1) if view.is_complex() else view)
        flat_grad = torch.cat(views, 0)
        return flat_grad.neg_() if self.param_groups[0].get("maximize", False) else flat_grad

    def _loss(self, loss) -> float:
        """The closure's loss as the float the search minimises (-loss with ``maximize``)."""
        return -_float(loss) if self.param_groups[0].get("maximize", False) else _float(loss)

    def _add(self, t, d):
        """x <- x + t d."""
        offset = 0
        for p in self._params:
            p = torch.view_as_real(p) if p.is_complex() else p
            p.add_(d[offset:offset + p.numel()].view_as(p), alpha=t)
            offset += p.numel()

    def _evaluate_at(self, closure, x, t, d):
        """(f, g) at x + t d; the parameters are put back to ``x`` afterwards."""
        self._add(t, d)
        loss = self._loss(closure())
        flat_grad = self._flat_grad()
        for p, saved in zip(self._params, x):
            p.copy_(saved)
        return loss, flat_grad

    # ------------------------------------------------------------------------ the step

    @torch.no_grad()
    def step(self, closure):
        """Up to ``max_iter`` L-BFGS iterations; returns the loss at the starting point."""
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        closure = torch.enable_grad()(closure)
        group = self.param_groups[0]
        lr = group["lr"]
        lr = lr.squeeze() if isinstance(lr, torch.Tensor) else lr
        max_iter, max_eval = group["max_iter"], group["max_eval"]
        tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]
        history_size = group["history_size"]
        if group["line_search_fn"] not in (None, "strong_wolfe"):
            raise RuntimeError("only 'strong_wolfe' is supported")

        if not self._params:  # nothing to optimise; the caller still gets its loss (as torch >= 2.14)
            return closure()
        # LBFGS's state is global; torch keeps it under the first parameter, which makes
        # load_state_dict cast its tensors to that parameter's dtype and device
        state = self.state[self._params[0]]
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)

        orig_loss = closure()
        loss = self._loss(orig_loss)
        evals = 1
        state["func_evals"] += 1
        flat_grad = self._flat_grad()
        if flat_grad.abs().max() <= tolerance_grad:
            return orig_loss  # already optimal

        d, t = state.get("d"), state.get("t")
        old_dirs, old_stps, ro = state.get("old_dirs"), state.get("old_stps"), state.get("ro")
        H_diag = state.get("H_diag")
        prev_flat_grad, prev_loss = state.get("prev_flat_grad"), state.get("prev_loss")

        for n_iter in range(1, max_iter + 1):
            state["n_iter"] += 1

            # direction (N&W Algorithm 7.5, steps 3-4)
            if state["n_iter"] == 1:
                d = flat_grad.neg()
                old_dirs, old_stps, ro, H_diag = [], [], [], 1
            else:
                y, s = flat_grad.sub(prev_flat_grad), d.mul(t)
                ys = y.dot(s)
                if ys > 1e-10:  # keep the pair only if the curvature condition holds
                    if len(old_dirs) == history_size:
                        old_dirs.pop(0)
                        old_stps.pop(0)
                        ro.pop(0)
                    old_dirs.append(y)
                    old_stps.append(s)
                    ro.append(1.0 / ys)
                    H_diag = ys / y.dot(y)  # gamma_k = s.y / y.y (eq. 7.20)
                if "al" not in state:
                    state["al"] = [None] * history_size
                d = two_loop(flat_grad, old_stps, old_dirs, ro, H_diag, state["al"])

            if prev_flat_grad is None:
                prev_flat_grad = flat_grad.clone(memory_format=torch.contiguous_format)
            else:
                prev_flat_grad.copy_(flat_grad)
            prev_loss = loss

            # step length: lr, scaled down on the very first iteration
            if state["n_iter"] == 1:
                t = min(1.0, 1.0 / flat_grad.abs().sum()) * lr
            else:
                t = lr
            gtd = flat_grad.dot(d)
            if gtd > -tolerance_change:
                break  # not a descent direction (to tolerance)

            if group["line_search_fn"] == "strong_wolfe":
                x = [p.clone(memory_format=torch.contiguous_format) for p in self._params]
                loss, flat_grad, t, ls_evals = strong_wolfe(
                    lambda t_: self._evaluate_at(closure, x, t_, d), t, d, loss, flat_grad, gtd,
                    max_ls=max_eval - evals)
                self._add(t, d)
                optimal = flat_grad.abs().max() <= tolerance_grad
            else:
                self._add(t, d)
                ls_evals, optimal = 0, False
                if n_iter != max_iter:  # no use re-evaluating after the last iteration
                    loss = self._loss(closure())
                    flat_grad = self._flat_grad()
                    optimal = flat_grad.abs().max() <= tolerance_grad
                    ls_evals = 1
            evals += ls_evals
            state["func_evals"] += ls_evals

            if n_iter == max_iter or evals >= max_eval or optimal:
                break
            if d.mul(t).abs().max() <= tolerance_change or abs(loss - prev_loss) < tolerance_change:
                break  # no progress

        state.update(d=d, t=t, old_dirs=old_dirs, old_stps=old_stps, ro=ro, H_diag=H_diag,
                     prev_flat_grad=prev_flat_grad, prev_loss=prev_loss)
        return orig_loss
