"""Knowledge distillation: a small *student* network learns from a larger *teacher*.

Two kinds of knowledge are transferred (chapter "Knowledge distillation"):

- **soft targets** (Hinton, Vinyals & Dean 2015, :cite:`hinton2015distilling`): the teacher's class
  probabilities softened by a temperature ``T``; the student minimises the KL divergence between the
  softened distributions, scaled by ``T**2`` (book equations ``distillation-softmax``,
  ``distillation-soft-loss`` and ``distillation-total-loss``);
- **matching representations** (FitNets hints, Romero et al. 2015, :cite:`romero2015fitnets`): an
  intermediate activation of the student, mapped by a learned regressor ``g`` to the teacher's width,
  is pulled towards the teacher's activation, ``||f(a_t) - g(a_s)||^2`` (equation
  ``distillation-feature-loss``).

The module also holds an :class:`Ensemble` of teachers and :func:`distill`, a training loop built on
:func:`courselib.training.fit` through its ``compute_loss`` hook. The course's efficient student,
:class:`courselib.models.SeparableCNN`, lives with the other models (and is importable from here).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .models import SeparableCNN  # noqa: F401 - importable from here too; documented in courselib.models
from .training import fit

__all__ = [
    "UNLABELLED",
    "softmax_with_temperature",
    "soft_target_loss",
    "distillation_loss",
    "feature_matching_loss",
    "HintRegressor",
    "Ensemble",
    "FeatureRecorder",
    "distill",
    "explore_soft_targets",
]


#: Label value marking an *unlabelled* example of the transfer set (PyTorch's ``ignore_index``
#: convention): it contributes to the soft-target and feature terms but not to the hard-label
#: cross-entropy. Hinton, Vinyals & Dean (2015, Section 2) note that the transfer set may be unlabelled.
UNLABELLED = -100


# ----------------------------------------------------------------------------- checks
def _check_temperature(temperature) -> float:
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise TypeError(f"temperature must be a positive number, got {temperature!r}") from None
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return t


def _check_alpha(alpha) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise TypeError(f"alpha must be a number in [0, 1], got {alpha!r}") from None
    if not (0.0 <= a <= 1.0):
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    return a


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    return x


def _check_logits(student_logits, teacher_logits):
    s = _as_tensor(student_logits, "student_logits").float()
    t = _as_tensor(teacher_logits, "teacher_logits").float()
    if s.ndim != 2 or t.ndim != 2:
        raise ValueError(
            "logits must be 2-D (batch, classes); got student shape "
            f"{tuple(s.shape)} and teacher shape {tuple(t.shape)}"
        )
    if s.shape != t.shape:
        raise ValueError(
            f"student and teacher logits must have the same shape, got student "
            f"{tuple(s.shape)} and teacher {tuple(t.shape)}"
        )
    if s.shape[0] == 0:
        raise ValueError("logits must hold at least one example (batch size 0)")
    return s, t


# ----------------------------------------------------------------------------- soft targets
def softmax_with_temperature(logits, temperature: float = 1.0) -> torch.Tensor:
    """The softened softmax ``q_i = exp(z_i / T) / sum_j exp(z_j / T)`` (book Eq. ``distillation-softmax``).

    Parameters
    ----------
    logits : torch.Tensor or numpy.ndarray, shape (..., n_classes)
        Scores ``z``.
    temperature : float, default 1.0
        ``T > 0``; ``T = 1`` is the ordinary softmax, larger ``T`` gives a softer distribution
        (Hinton, Vinyals & Dean 2015, Section 2).

    Returns
    -------
    torch.Tensor
        Probabilities, same shape as ``logits``.
    """
    T = _check_temperature(temperature)
    z = _as_tensor(logits, "logits").float()
    return torch.softmax(z / T, dim=-1)


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Row-wise KL(p || q) from log-probabilities, with the convention 0 * log 0 = 0."""
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(dim=-1)


def soft_target_loss(student_logits, teacher_logits, temperature: float = 4.0) -> torch.Tensor:
    """Soft-target loss ``T^2 * mean_n KL(p_t^T || p_s^T)`` (book Eq. ``distillation-soft-loss``).

    ``p^T = softmax(z / T)`` is the softened distribution of :func:`softmax_with_temperature`. KL and
    the soft cross-entropy ``-sum_i p_t,i log p_s,i`` differ by the teacher's entropy, which does not
    depend on the student: both have the same gradient, and KL is zero when the student matches.
    The factor ``T^2`` keeps the gradient's magnitude roughly independent of ``T``: the gradient of
    the KL with respect to a student logit is ``(p_s,i - p_t,i) / T``, which behaves like
    ``(z_s,i - z_t,i) / (K T^2)`` for large ``T`` (Hinton, Vinyals & Dean 2015, Section 2.1).

    Parameters
    ----------
    student_logits, teacher_logits : torch.Tensor, shape (batch, n_classes)
        Logits of the student and of the teacher. For an :class:`Ensemble`, pass
        ``ensemble.log_probs(x)`` (the log of the averaged probabilities) as the teacher's logits.
    temperature : float, default 4.0
        ``T > 0``.

    Returns
    -------
    torch.Tensor
        A scalar; differentiable with respect to ``student_logits`` (and ``teacher_logits``, though
        the teacher is normally detached).

    Raises
    ------
    ValueError
        If the shapes differ, are not 2-D, or ``temperature <= 0``.
    """
    T = _check_temperature(temperature)
    s, t = _check_logits(student_logits, teacher_logits)
    log_ps = F.log_softmax(s / T, dim=1)
    log_pt = F.log_softmax(t / T, dim=1)
    return (T * T) * _kl_rows(log_pt, log_ps).mean()


def distillation_loss(
    student_logits, teacher_logits, labels, temperature: float = 4.0, alpha: float = 0.9
) -> torch.Tensor:
    """Hinton et al.'s objective ``alpha * soft + (1 - alpha) * CE(z_s, y)`` (Eq. ``distillation-total-loss``).

    Parameters
    ----------
    student_logits, teacher_logits : torch.Tensor, shape (batch, n_classes)
    labels : torch.Tensor of int, shape (batch,)
        True classes for the hard-label cross-entropy (computed at ``T = 1``). Examples labelled
        :data:`UNLABELLED` (-100) are left out of the cross-entropy, which is averaged over the
        labelled examples only (0 if there are none): they are taught by the teacher alone.
    temperature : float, default 4.0
        ``T > 0`` for the soft term, see :func:`soft_target_loss`.
    alpha : float in [0, 1], default 0.9
        Weight of the soft term; ``alpha = 0`` is ordinary training, ``alpha = 1`` pure distillation.

    Returns
    -------
    torch.Tensor
        A scalar.

    Raises
    ------
    ValueError
        Shape mismatch, ``temperature <= 0`` or ``alpha`` outside ``[0, 1]``.
    """
    a = _check_alpha(alpha)
    s, t = _check_logits(student_logits, teacher_logits)
    y = _as_tensor(labels, "labels")
    if y.ndim != 1 or y.shape[0] != s.shape[0]:
        raise ValueError(f"labels must have shape ({s.shape[0]},) to match the logits, got {tuple(y.shape)}")
    if y.dtype.is_floating_point:
        raise TypeError(f"labels must be integer class indices, got dtype {y.dtype}")
    y = y.long()
    labelled = y != UNLABELLED
    if bool(((y[labelled] < 0) | (y[labelled] >= s.shape[1])).any()):
        raise ValueError(
            f"labels must lie in [0, {s.shape[1]}) or equal UNLABELLED ({UNLABELLED}), "
            f"got values {sorted(set(y[labelled].tolist()))}"
        )
    soft = soft_target_loss(s, t, temperature)
    if bool(labelled.any()):
        hard = F.cross_entropy(s[labelled], y[labelled])
    else:  # a batch of unlabelled transfer examples only
        hard = s.sum() * 0.0
    return a * soft + (1.0 - a) * hard


# ----------------------------------------------------------------------------- hints
def feature_matching_loss(
    teacher_features, student_features, f: Callable | None = None, g: Callable | None = None
) -> torch.Tensor:
    """Representation matching ``mean_n ||f(a_t) - g(a_s)||_2^2`` (book Eq. ``distillation-feature-loss``).

    With ``f = g = identity`` this is ``||a_t - a_s||^2``, which needs the two activations to have the
    same shape. FitNets (Romero et al. 2015, Eq. 3) make it work between networks of different widths
    by a learned regressor ``g`` (see :class:`HintRegressor`) applied to the student's "guided" layer.
    The squared differences are summed over all feature dimensions (channels and positions) and
    averaged over the batch. (FitNets write ``1/2 ||.||^2``; the factor only rescales the weight.)

    Parameters
    ----------
    teacher_features, student_features : torch.Tensor, shape (batch, ...)
        Activations ``a_t`` and ``a_s``.
    f, g : callable, optional
        Transforms of the teacher's and the student's features; identity by default.

    Returns
    -------
    torch.Tensor
        A scalar.

    Raises
    ------
    ValueError
        If ``f(a_t)`` and ``g(a_s)`` do not have the same shape (use a :class:`HintRegressor`).
    """
    at = _as_tensor(teacher_features, "teacher_features")
    as_ = _as_tensor(student_features, "student_features")
    if at.ndim < 2 or as_.ndim < 2:
        raise ValueError(
            "features must have a batch dimension and at least one feature dimension; got "
            f"teacher {tuple(at.shape)} and student {tuple(as_.shape)}"
        )
    ft = at if f is None else f(at)
    gs = as_ if g is None else g(as_)
    if ft.shape != gs.shape:
        raise ValueError(
            f"f(teacher_features) has shape {tuple(ft.shape)} but g(student_features) has "
            f"shape {tuple(gs.shape)}; they must match (map the student's features to the "
            "teacher's width with a HintRegressor passed as g)"
        )
    if ft.shape[0] == 0:
        raise ValueError("features must hold at least one example (batch size 0)")
    diff = (ft.float() - gs.float()).reshape(ft.shape[0], -1)
    return diff.pow(2).sum(dim=1).mean()


class HintRegressor(nn.Module):
    """FitNets' regressor ``g``: maps the student's features to the teacher's width (Romero et al. 2015).

    For convolutional features ``(batch, C_s, H, W)`` it is a 1x1 convolution to ``C_t`` channels
    (the spatial size must already agree; FitNets also use larger kernels to fix that); for vectors
    ``(batch, d_s)`` a linear layer to ``d_t``. It is trained together with the student, so it only
    exists during training and adds nothing to the deployed student.

    Parameters
    ----------
    student_width : int
        Channels (or features) of the student's guided layer.
    teacher_width : int
        Channels (or features) of the teacher's hint layer.
    conv : bool, default True
        1x1 convolution (``True``) or linear layer (``False``).
    """

    def __init__(self, student_width: int, teacher_width: int, conv: bool = True):
        super().__init__()
        for name, v in (("student_width", student_width), ("teacher_width", teacher_width)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.student_width = int(student_width)
        self.teacher_width = int(teacher_width)
        self.conv = bool(conv)
        if self.conv:
            self.proj = nn.Conv2d(self.student_width, self.teacher_width, kernel_size=1)
        else:
            self.proj = nn.Linear(self.student_width, self.teacher_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        want = 4 if self.conv else 2
        if x.ndim != want or x.shape[1] != self.student_width:
            kind = "(batch, C, H, W)" if self.conv else "(batch, d)"
            raise ValueError(
                f"HintRegressor expects {kind} input with {self.student_width} "
                f"channels/features, got shape {tuple(x.shape)}"
            )
        return self.proj(x)


# ----------------------------------------------------------------------------- ensemble
class Ensemble(nn.Module):
    """An ensemble of classifiers whose ``forward`` returns the **mean of their softmax probabilities**.

    ``forward`` returns probabilities, not logits: ``argmax`` gives the ensemble's prediction, but do
    not feed the output to a cross-entropy that expects logits. To distill the ensemble, use
    :meth:`log_probs` (``log`` of the mean probabilities) as the teacher's logits: since
    ``softmax(log p) = p``, the tempered distribution ``softmax(log p / T)`` is proportional to
    ``p ** (1/T)``, the ensemble's averaged distribution softened by ``T`` (Hinton, Vinyals & Dean 2015,
    Section 4 and Table 1: an ensemble of 10 speech-recognition models distilled into a single one, 58.9% /
    61.1% / 60.8% test frame accuracy for baseline / ensemble / distilled). :func:`distill` does this
    automatically.

    Parameters
    ----------
    models : sequence of nn.Module
        The members, each mapping an input batch to logits of the same shape.
    """

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        models = list(models) if not isinstance(models, nn.Module) else [models]
        if len(models) == 0:
            raise ValueError("Ensemble needs at least one model, got an empty sequence")
        for i, m in enumerate(models):
            if not isinstance(m, nn.Module):
                raise TypeError(f"Ensemble members must be nn.Module, member {i} is {type(m).__name__}")
        self.members = nn.ModuleList(models)

    def log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """``log(mean_m softmax(z_m))``, computed stably as ``logsumexp_m(log_softmax(z_m)) - log M``."""
        logp = torch.stack([F.log_softmax(m(x), dim=-1) for m in self.members])
        return torch.logsumexp(logp, dim=0) - math.log(len(self.members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.softmax(m(x), dim=-1) for m in self.members]).mean(dim=0)


# ----------------------------------------------------------------------------- training
class FeatureRecorder:
    """Record the output of a named submodule on every forward pass (a forward hook).

    Use as a context manager: ``with FeatureRecorder(model, "conv2") as rec: model(x); rec.output``.
    """

    def __init__(self, model: nn.Module, layer: str):
        modules = dict(model.named_modules())
        if layer not in modules or layer == "":
            names = [n for n in modules if n]
            raise ValueError(f"{type(model).__name__} has no submodule {layer!r}; available: {names}")
        self.module = modules[layer]
        self.output = None
        self._handle = None

    def _hook(self, module, inputs, output):
        self.output = output

    def __enter__(self):
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        self._handle = None
        return False


class _StudentWithRegressor(nn.Module):
    """Student plus the hint regressor, so that ``fit``'s optimizer trains both; forward = student."""

    def __init__(self, student: nn.Module, regressor: nn.Module):
        super().__init__()
        self.student = student
        self.regressor = regressor

    def forward(self, x):
        return self.student(x)


def _teacher_logits(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(teacher, Ensemble):
        return teacher.log_probs(x)
    return teacher(x)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
    beta: float = 0.0,
    student_layer: str | None = None,
    teacher_layer: str | None = None,
    regressor: nn.Module | None = None,
    epochs: int = 20,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    optimizer: str = "adam",
    val_data=None,
    seed: int = 0,
    progress: bool = True,
    desc: str | None = None,
) -> dict:
    """Train ``student`` to mimic ``teacher`` (Hinton et al. 2015 soft targets, FitNets hints).

    Minimises, per batch, ``alpha * soft_target_loss(z_s, z_t, T) + (1 - alpha) * CE(z_s, y)
    + beta * feature_matching_loss(a_t, a_s, g=regressor)`` (book Eqs. ``distillation-total-loss`` and
    ``distillation-feature-loss``) with :func:`courselib.training.fit` through its ``compute_loss``
    hook. The teacher is put in eval mode, runs under ``torch.no_grad()`` and is never optimised, so
    its parameters are unchanged; its original train/eval mode is restored at the end. An
    :class:`Ensemble` teacher contributes ``log`` of its mean probabilities as logits.

    Parameters
    ----------
    student, teacher : nn.Module
        Networks mapping a batch to logits (the teacher may be an :class:`Ensemble`).
    data : (X, y) or DataLoader
        The transfer set, passed to :func:`courselib.training.fit`. Labels equal to
        :data:`UNLABELLED` mark unlabelled examples: they are learned from the teacher only (soft
        targets and features), the hard-label term uses the labelled ones. (The per-epoch
        ``train_accuracy`` of the history counts unlabelled examples as errors.)
    temperature : float, default 4.0
    alpha : float in [0, 1], default 0.9
        Weight of the soft-target term.
    beta : float, default 0.0
        Weight of the feature-matching term; ``> 0`` needs ``student_layer`` and ``teacher_layer``.
    student_layer, teacher_layer : str, optional
        Names (as in ``named_modules()``) of the student's guided layer and the teacher's hint layer.
    regressor : nn.Module, optional
        ``g`` mapping the student's features to the teacher's shape (e.g. :class:`HintRegressor`); it
        is trained jointly with the student. ``None`` means identity (shapes must then match).
    epochs, lr, weight_decay, batch_size, optimizer, val_data, seed, progress, desc
        As in :func:`courselib.training.fit`.

    Returns
    -------
    dict
        The history returned by :func:`courselib.training.fit`.
    """
    T = _check_temperature(temperature)
    a = _check_alpha(alpha)
    try:
        b = float(beta)
    except (TypeError, ValueError):
        raise TypeError(f"beta must be a number >= 0, got {beta!r}") from None
    if not math.isfinite(b) or b < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    for name, m in (("student", student), ("teacher", teacher)):
        if not isinstance(m, nn.Module):
            raise TypeError(f"{name} must be an nn.Module, got {type(m).__name__}")
    if student is teacher:
        raise ValueError("student and teacher must be different modules")
    use_features = b > 0
    if use_features and (student_layer is None or teacher_layer is None):
        raise ValueError("beta > 0 needs student_layer and teacher_layer (names of submodules)")
    if regressor is not None and not isinstance(regressor, nn.Module):
        raise TypeError(f"regressor must be an nn.Module or None, got {type(regressor).__name__}")

    s_rec = FeatureRecorder(student, student_layer) if use_features else None
    t_rec = FeatureRecorder(teacher, teacher_layer) if use_features else None
    g = regressor if (use_features and regressor is not None) else None
    model = _StudentWithRegressor(student, g) if g is not None else student

    was_training = teacher.training
    grad_flags = [p.requires_grad for p in teacher.parameters()]
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def compute_loss(m, xb, yb):
        with torch.no_grad():
            z_t = _teacher_logits(teacher, xb)
        z_s = m(xb)
        loss = distillation_loss(z_s, z_t, yb, T, a)
        if use_features:
            loss = loss + b * feature_matching_loss(t_rec.output, s_rec.output, g=g)
        return loss

    try:
        if use_features:
            s_rec.__enter__()
            t_rec.__enter__()
        history = fit(
            model,
            data,
            epochs=epochs,
            lr=lr,
            weight_decay=weight_decay,
            batch_size=batch_size,
            optimizer=optimizer,
            compute_loss=compute_loss,
            val_data=val_data,
            seed=seed,
            progress=progress,
            desc=desc,
        )
    finally:
        if use_features:
            s_rec.__exit__()
            t_rec.__exit__()
        for p, flag in zip(teacher.parameters(), grad_flags):
            p.requires_grad_(flag)
        teacher.train(was_training)
    return history


# ----------------------------------------------------------------------------- explorer
_EXAMPLE_LOGITS = np.array([1.0, -2.0, 0.5, 9.0, -3.0, 3.5, -1.0, 0.0, 4.0, 2.0], dtype=np.float32)


def explore_soft_targets(
    temperature: float = 4.0, alpha: float = 0.5, teacher_logits=None, label: int | None = None, student_logits=None
):
    """Draw the teacher's softened probabilities and the per-class gradient of the distillation loss.

    Left: ``softmax(z_t / T)`` next to the hard one-hot label. Right: the gradient of
    :func:`distillation_loss` with respect to the student's logits, ``alpha * T * (p_s^T - p_t^T)
    + (1 - alpha) * (p_s - y)``, for a student that currently outputs ``student_logits`` (uniform by
    default): negative bars are the classes the student is pushed up on.

    Parameters
    ----------
    temperature : float, default 4.0
    alpha : float in [0, 1], default 0.5
    teacher_logits : array of shape (n_classes,), optional
        One example's teacher logits (a made-up "3 that looks a bit like 8 and 5" by default).
    label : int, optional
        True class; defaults to the teacher's argmax.
    student_logits : array of shape (n_classes,), optional
        Defaults to zeros (a student that knows nothing yet).

    Returns
    -------
    matplotlib.figure.Figure
    """
    T = _check_temperature(temperature)
    a = _check_alpha(alpha)
    zt = torch.as_tensor(
        _EXAMPLE_LOGITS if teacher_logits is None else np.asarray(teacher_logits), dtype=torch.float32
    ).reshape(1, -1)
    k = zt.shape[1]
    zs = (
        torch.zeros(1, k)
        if student_logits is None
        else torch.as_tensor(np.asarray(student_logits), dtype=torch.float32).reshape(1, -1)
    )
    if zs.shape != zt.shape:
        raise ValueError(f"student_logits must have {k} entries, got {zs.shape[1]}")
    y = int(zt.argmax()) if label is None else int(label)
    if not 0 <= y < k:
        raise ValueError(f"label must be in [0, {k}), got {label!r}")
    zs = zs.clone().requires_grad_(True)
    loss = distillation_loss(zs, zt, torch.tensor([y]), T, a)
    (grad,) = torch.autograd.grad(loss, zs)
    pt = softmax_with_temperature(zt, T)[0].numpy()
    classes = np.arange(k)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    onehot = np.eye(k)[y]
    axes[0].bar(classes - 0.2, onehot, width=0.4, color="0.7", label="hard label")
    axes[0].bar(classes + 0.2, pt, width=0.4, color="tab:blue", label=f"teacher, T={T:g}")
    axes[0].set(xticks=classes, xlabel="class", ylabel="probability", ylim=(0, 1.05), title="targets")
    axes[0].legend(fontsize=8)
    axes[1].bar(classes, grad[0].numpy(), color=np.where(grad[0].numpy() < 0, "tab:green", "tab:red"))
    axes[1].axhline(0, color="k", lw=0.8)
    axes[1].set(xticks=classes, xlabel="class", ylabel="d loss / d student logit", title=f"gradient, alpha={a:g}")
    fig.tight_layout()
    return fig
