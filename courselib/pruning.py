"""Parameter pruning: Optimal Brain Damage and filter pruning.

Two families of pruning, as in the chapters *Optimal Brain Damage* (``book/pruning_obd.md``) and
*Pruning filters* (``book/pruning_filters.md``):

- **Unstructured** pruning of single weights, ranked by magnitude or by the Optimal Brain Damage
  saliency ``s_k = h_kk u_k^2 / 2`` of LeCun, Denker & Solla (1989) (book Eq. ``obd-saliency``).
  The ranking is :func:`torch.nn.utils.prune.global_unstructured`'s and the masks are
  :mod:`torch.nn.utils.prune`'s (``custom_from_mask``), so ``prune.remove`` works and retraining keeps
  pruned weights at zero.
- **Structured** pruning of whole convolution filters, ranked by the L1 norm of their weights
  (Li, Kadav, Durdanovic, Samet & Graf, ICLR 2017; book Eq. ``filters-l1``). The filter, its feature
  map, its BatchNorm entries and the matching input channels of the next layer are physically
  removed, which leaves a smaller *dense* network.

Plus the size and speed of dense versus CSR storage. The cost model both chapters use (parameter
counts, multiply-accumulates, latency, BatchNorm folding) lives in :mod:`courselib.measure`.

Each part is written in a module of its own, the size of its chapter's story, and gathered here:
``courselib/_pruning_obd.py`` (the Hessian diagonal, saliencies, pruning by a score, the prune-and-retrain
loop), ``courselib/_pruning_filters.py`` (filter norms, the surgery of :func:`remove_filters`, the
multi-layer strategies) and ``courselib/_pruning_sparse.py`` (dense versus CSR). Import from here.

"Which layer comes next" (for :func:`remove_filters`) is read from the order of
``model.named_modules()``: this is the execution order for :class:`torch.nn.Sequential` models and
for :class:`courselib.models.CourseCNN`, but not for networks with branches (ResNets), where the
function raises a ``ValueError`` rather than guess.
"""

from __future__ import annotations

from ._pruning_filters import STRATEGIES as _STRATEGIES
from ._pruning_filters import (
    l1_filter_norms,
    plot_filter_ranking,
    prune_filters,
    prune_layers,
    remove_filters,
    smallest_filters,
)
from ._pruning_obd import (
    diagonal_hessian,
    iterative_prune,
    magnitude_prune,
    obd_saliency,
    plot_saliency_vs_magnitude,
    prunable_parameters,
    random_prune,
    saliency_prune,
    sparsity,
)
from ._pruning_sparse import dense_vs_csr, storage_bytes

#: The two multi-layer strategies of Li et al. (2017), Sec. 3.3, accepted by :func:`prune_layers`.
STRATEGIES = _STRATEGIES

__all__ = [
    "diagonal_hessian",
    "obd_saliency",
    "magnitude_prune",
    "saliency_prune",
    "random_prune",
    "iterative_prune",
    "sparsity",
    "prunable_parameters",
    "l1_filter_norms",
    "smallest_filters",
    "remove_filters",
    "prune_filters",
    "prune_layers",
    "STRATEGIES",
    "storage_bytes",
    "dense_vs_csr",
    "plot_saliency_vs_magnitude",
    "plot_filter_ranking",
]
