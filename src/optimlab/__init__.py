"""optimlab: the classic first-order optimizers as drop-in torch.optim replacements,
written once as readable rules and run by a fused kernel, plus a lab that compares them.

>>> import optimlab
>>> opt = optimlab.Adam(model.parameters(), lr=1e-3)      # was: torch.optim.Adam
"""

from . import rules, schedules
from .combined import Combined, muon_param_groups, with_adamw_for_the_rest
from .groups import param_groups
from .lbfgs import LBFGS
from .sparse_adam import SparseAdam
from .lr_scheduler import LRScheduler
from .optimizers import NAG, SGD, Adadelta, Adagrad, Adam, Adamax, AdamW, Momentum, NAdam, RMSprop
from .optimizers_torch_extra import ASGD, Lion, RAdam, Rprop
from .optimizers_modern import AdaBelief, Adan, ScheduleFreeAdamW, ScheduleFreeSGD
from .optimizers_reductions import LAMB, LARS, Adafactor, Muon, Prodigy
from .registry import REGISTRY, create, lookup, names, sets

__version__ = "0.1.0"

__all__ = [
    "SGD", "Momentum", "NAG", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "Adamax",
    "NAdam", "RAdam", "Rprop", "ASGD", "Lion", "SparseAdam", "LBFGS", "Combined", "muon_param_groups",
    "with_adamw_for_the_rest", "LRScheduler", "param_groups", "create", "lookup", "names", "sets",
    "REGISTRY",
    "rules", "schedules", "__version__",
    "AdaBelief", "Adan", "ScheduleFreeAdamW", "ScheduleFreeSGD",
    "Adafactor", "Muon", "LAMB", "LARS", "Prodigy",
]
