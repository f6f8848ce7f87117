"""What a cached plan read of ``optimizer.state``, and whether that still holds.

torch.optim reads ``optimizer.state[p]`` afresh at every step, so users edit it between
steps: they clear a param's state to re-initialise a layer (``state[p].clear()``,
``state[p] = {}``, ``del state[p]``), replace a buffer (``state[p]["exp_avg"] =
torch.zeros_like(p)``), reset ``step``, or clear everything (``state.clear()``). The fast
paths cache what they found (the C kernel's pointer tables, the multi-tensor and
torch-kernel lists, FSDP2's local views); a :class:`StateSnapshot`, taken when such a plan
is built, tells at each step whether any of it changed, and the plan is rebuilt if so:

* ``state`` is the same object with as many entries (a param's state added or dropped);
* each planned param's entry is still the same dict object (``state[p] = {}``);
* that dict has as many entries, holding the same objects in the same order (``clear()``,
  a key added, dropped or rebound).

Compared by identity only: ~0.15 us a param in Python. Where the C++ step helper is built
(``gather.cpp``) it checks the same without hashing a key, a few ns a param, from where each
param's entry lay in ``state`` when the snapshot was taken. Changes in place need no check
(the plans read the tensors' memory). Not seen: a state tensor's storage swapped in place
(``t.data = u``, ``t.set_(u)``); call :func:`optimlab.fused.invalidate` after that.
"""

from __future__ import annotations

import itertools
import operator

import numpy as np

from . import build

_is = operator.is_
_values = dict.values
#: stands for a param without state; never written (it is in no optimizer's state)
_ABSENT: dict = {}


class StateSnapshot:
    """``state``'s entries for ``params`` as they are now (see the module docstring).
    ``compile``: build the C++ helper if it is not in the cache yet; ``checker``: its two
    functions, given (while the helper verifies itself)."""

    def __init__(self, state, params, compile: bool = False, checker=None):
        self.state = state
        self.size = len(state)
        self.params = list(params)
        dicts = [state.get(p, _ABSENT) for p in self.params]
        self.present = [p for p, d in zip(self.params, dicts) if d is not _ABSENT]
        self.dicts = [d for d in dicts if d is not _ABSENT]
        self.sizes = list(map(len, self.dicts))
        # a state entry that is not a plain dict (assigned by hand) is re-read every step
        plain = isinstance(state, dict) and all(type(d) is dict for d in self.dicts)
        self.values = list(itertools.chain.from_iterable(map(_values, self.dicts))) if plain else None
        #: the address of the C++ helper's description of this snapshot (None: checked in Python)
        self.meta = None
        if checker is None and plain and self.params:
            checker = build.state_checker(compile)
        if checker is not None and plain:
            self._c_arrays(state, dicts, *checker)

    def _c_arrays(self, state, dicts, positions, same) -> None:
        n = len(self.params)
        self.positions = np.zeros(n, dtype=np.int64)
        if positions(state, self.params, self.positions.ctypes.data, n) != 0:
            return
        self._arrays = (self.positions, np.array(list(map(id, dicts)), dtype=np.uint64),
                        np.array(list(map(len, dicts)), dtype=np.int64),
                        np.array(list(map(id, self.values)) or [0], dtype=np.uint64))
        self._meta = np.array([id(state), self.size, n, id(self.params)]
                              + [a.ctypes.data for a in self._arrays], dtype=np.uint64)
        self.meta = self._meta.ctypes.data
        self._same = same

    def holds(self, state) -> bool:
        """Whether ``state`` is as it was when the snapshot was taken."""
        if self.meta is not None:
            return self._same(state, self.meta) == 1
        if state is not self.state or len(state) != self.size or self.values is None:
            return False
        return (all(map(_is, map(state.get, self.present), self.dicts))
                and list(map(len, self.dicts)) == self.sizes
                and all(map(_is, itertools.chain.from_iterable(map(_values, self.dicts)), self.values)))


__all__ = ["StateSnapshot"]
