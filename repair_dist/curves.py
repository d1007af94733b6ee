"""Mode-connectivity curves between two endpoints (Garipov et al. 2018; Tatro et al. 2020).

A curve joins frozen endpoints A and B through one trainable point M of the same architecture:

* ``bezier``    - quadratic Bezier, phi(t) = (1-t)^2 A + 2t(1-t) M + t^2 B;
* ``polychain`` - two segments, A -> M for t <= 1/2 and M -> B after.

M starts at the linear midpoint (A + B) / 2 and is trained on the expected loss over the
curve: every batch draws t ~ U(0, 1) and takes a gradient step on the loss of phi(t). The
combined weights are built per batch and run through ``torch.func.functional_call``, so the
endpoints never receive gradients and the architecture's own module runs unchanged.

Tatro et al.'s question is whether aligning B to A first (``activation_matching`` +
``apply_permutation``) makes the learned curve lower and easier to find; a trial fits one
curve to the aligned endpoints and one to the naive ones and compares their barriers
(:func:`curve_barriers`) with the straight line's.

A :class:`Curve` is plain data -- the two endpoints, M as an ordinary ``state_dict`` of the
architecture, and the kind -- so M can be saved with ``torch.save(curve.mid, path)`` and a
curve rebuilt with ``Curve(net_a, net_b, torch.load(path, weights_only=True), kind)``.

BatchNorm: running statistics are meaningless along a curve (they belong to no single set of
weights), so M trains with BN in train mode (batch statistics) and :meth:`Curve.at` re-estimates
the statistics at t with REPAIR's ``reset`` pass, which shards over ``workers``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.data import Dataset, TensorDataset

# Internals in one place (issue 8 moves execution/metrics helpers; re-point them here).
from .data.batches import BatchPlan, as_plan
from .merge import interpolate
from .metrics import barriers, evaluate
from .passes import Workers, device_of, resolve_executor
from .perm import check_same_architecture
from .pipeline import alpha_grid
from .repair import repair
from .train import loader_batches, lr_factor, tensor_batches
from .variants import CURVE_KINDS as KINDS

#: Columns of :func:`curve_barriers` (one value per curve, on one split).
BARRIER_COLUMNS = (
    "loss_a",
    "loss_b",
    "acc_a",
    "acc_b",
    "loss_mid",
    "acc_mid",
    "barrier_loss_max",
    "barrier_acc_max",
    "barrier_loss_mid",
    "barrier_acc_mid",
)


def curve_weights(kind: str, t: float) -> tuple[float, float, float]:
    """Weights of (A, M, B) at position ``t`` of a curve of ``kind``."""
    if kind == "bezier":
        return ((1.0 - t) ** 2, 2.0 * t * (1.0 - t), t * t)
    if kind == "polychain":
        if t <= 0.5:
            return (1.0 - 2.0 * t, 2.0 * t, 0.0)
        return (0.0, 2.0 - 2.0 * t, 2.0 * t - 1.0)
    raise ValueError(f"unknown curve kind {kind!r}; choose one of {', '.join(KINDS)}")


def combine(
    weights: tuple[float, float, float],
    a: dict[str, torch.Tensor],
    m: dict[str, torch.Tensor],
    b: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """phi's tensors ``wa * a + wm * m + wb * b`` per name of ``a``, differentiable in ``m``.

    This is what a training step runs; with weights (1, 0, 0) it returns A's values exactly.
    """
    wa, wm, wb = weights
    return {n: wa * a[n] + wm * m[n] + wb * b[n] for n in a}


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown curve kind {kind!r}; choose one of {', '.join(KINDS)}")


def _in_unit_interval(t: object) -> bool:
    try:
        v = float(t)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return math.isfinite(v) and 0.0 <= v <= 1.0


def _check_t(t: float) -> float:
    if isinstance(t, bool) or not _in_unit_interval(t):
        raise ValueError(f"curve position t must lie in [0, 1] (got {t!r})")
    return float(t)


def t_grid(ts: int | Sequence[float]) -> list[float]:
    """``11`` -> 0.0, 0.1, ..., 1.0; a list is checked to lie in [0, 1].

    0, 1/2 and 1 are always included: barriers need the endpoints and the midpoint.
    """
    if isinstance(ts, (bool, str)) or not isinstance(ts, (int, Sequence)):
        raise TypeError(f"ts must be a number of points or a list of t values (got {ts!r})")
    if isinstance(ts, int) and ts < 2:
        raise ValueError(f"a t grid needs at least 2 points (the endpoints), got {ts}")
    if not isinstance(ts, int):
        bad = [t for t in ts if isinstance(t, bool) or not _in_unit_interval(t)]
        if bad or not ts:
            raise ValueError(f"t grid values must be numbers in [0, 1]; got {bad or 'none'}")
    return alpha_grid(ts)


def has_batchnorm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


@dataclass
class Curve:
    """Endpoints + the trained point M (a plain state dict of the architecture) + the kind.

    ``history`` holds the mean training loss per epoch of :func:`fit_curve` and ``seconds``
    its wall time (both empty/zero for a curve rebuilt from a saved M). ``train`` is the data
    the curve was fitted on: :meth:`at` re-estimates BN statistics on it unless given other
    data (a curve rebuilt from a saved M has none until one is passed).
    """

    net_a: nn.Module
    net_b: nn.Module
    mid: dict[str, torch.Tensor]
    kind: str = "bezier"
    history: list[float] = field(default_factory=list)
    seconds: float = 0.0
    train: Dataset | BatchPlan | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_kind(self.kind)
        check_same_architecture(self.net_a, self.net_b)
        ref = {k: tuple(v.shape) for k, v in self.net_a.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in self.mid.items()}
        if got != ref:
            diff = sorted(set(ref) ^ set(got)) or [k for k in ref if ref[k] != got[k]]
            raise ValueError(
                f"curve midpoint M is not a state dict of the endpoints' net: {diff[:3]}"
            )

    def mid_net(self) -> nn.Module:
        """M as a net of the endpoints' architecture (eval mode)."""
        net = copy.deepcopy(self.net_a)
        net.load_state_dict(self.mid)
        return net.eval()

    def point(self, t: float) -> nn.Module:
        """phi(t) as a plain net: every floating tensor (BN buffers too) combined with the
        curve weights of (A, M, B). Exact at the ends: ``point(0)`` holds A's tensors."""
        w = curve_weights(self.kind, _check_t(t))
        return interpolate([self.net_a, self.mid_net(), self.net_b], list(w))

    def at(
        self,
        t: float,
        data: Dataset | BatchPlan | None = None,
        *,
        batch_size: int = 500,
        workers: Workers = 1,
    ) -> nn.Module:
        """phi(t) ready to evaluate: for BN nets, statistics re-estimated at t on ``data``
        (default: the data the curve was fitted on).

        The re-estimate is REPAIR's ``reset`` (one sharded pass over ``data``), because BN
        buffers combined along the curve describe no set of weights. Nets without BN need
        no data and get :meth:`point`.
        """
        t = _check_t(t)
        bn = has_batchnorm(self.net_a)
        data = self.train if data is None else data
        if bn and data is None:
            raise ValueError(
                "this curve has BatchNorm and no fitting data: pass data to re-estimate its statistics at t"
            )
        net = self.point(t)
        if not bn:
            return net
        return repair(net, [net], [1.0], data, "reset", batch_size=batch_size, workers=workers)


EpochBatches = Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]


def _epoch_batches(
    data: Dataset, batch_size: int, gen: torch.Generator, device: torch.device
) -> tuple[int, EpochBatches]:
    """(steps per epoch, a callable giving one epoch's shuffled batches), as train_model."""
    if isinstance(data, TensorDataset):
        return max(1, len(data) // batch_size), tensor_batches(data, batch_size, device, gen)
    n = len(data)  # type: ignore[arg-type]
    steps = max(1, n // batch_size) if n > batch_size else 1
    return steps, loader_batches(data, batch_size, gen, 0)


def fit_curve(
    net_a: nn.Module,
    net_b: nn.Module,
    train: Dataset,
    *,
    kind: str = "bezier",
    epochs: int = 20,
    lr: float = 0.03,
    batch_size: int = 64,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    warmup_epochs: float = 1.0,
    seed: int = 0,
    device: str | torch.device | None = None,
    workers: int = 1,
    grad_hook: Callable[[Sequence[torch.Tensor]], None] | None = None,
) -> Curve:
    """Train the middle point M of a ``kind`` curve from ``net_a`` to ``net_b`` on ``train``.

    SGD (Nesterov momentum, weight decay on M) with a warmup + cosine schedule, the recipe
    of :func:`~repair_dist.train_model`, so a curve epoch costs about one endpoint epoch.
    Deterministic given ``seed``: batch order and the t of every batch come from seeded
    generators. ``net_b`` is used as given: align it first for an aligned curve.

    ``workers`` is the data-parallel width. Curve training runs in this process; a wider
    request is refused: data-parallel training belongs to the sweep's Ray Train layer
    (:func:`repair_dist.sweep.ddp.fit_curve_data_parallel`), which runs this function on every
    rank with ``grad_hook`` averaging M's gradients across ranks after each backward.
    """
    _check_kind(kind)
    check_same_architecture(net_a, net_b)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs <= 0:
        raise ValueError(f"epochs must be a positive int (got {epochs!r})")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be > 0 (got {lr!r})")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (got {batch_size!r})")
    if not isinstance(train, Dataset):
        raise TypeError(f"train must be a torch Dataset (got {type(train).__name__})")
    if len(train) == 0:  # type: ignore[arg-type]
        raise ValueError("train is empty")
    if workers != 1:
        raise ValueError(
            f"fit_curve trains in this process; data-parallel curve training is not built "
            f"yet, so workers must be 1 (got {workers!r})"
        )

    start = time.perf_counter()
    dev = torch.device(device) if device is not None else device_of(net_a)
    a_params = {n: p.detach().to(dev) for n, p in net_a.named_parameters()}
    b_params = {n: p.detach().to(dev) for n, p in net_b.named_parameters()}
    init = interpolate([net_a, net_b], [0.5, 0.5]).to(dev)

    # The template runs the forward; its buffers are scratch (train-mode BN updates them).
    template = copy.deepcopy(net_a).to(dev).train()
    mid = {n: nn.Parameter(p.detach().clone()) for n, p in init.named_parameters()}
    buffers = dict(template.named_buffers())

    gen = torch.Generator().manual_seed(seed)
    t_gen = torch.Generator().manual_seed(seed + 1)
    steps, epoch_batches = _epoch_batches(train, batch_size, gen, dev)
    opt = torch.optim.SGD(
        mid.values(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0
    )
    total = epochs * steps
    warmup = min(total, round(warmup_epochs * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(min(step, total - 1), total, "cosine", warmup)
    )

    history: list[float] = []
    for epoch in range(epochs):
        loss_sum, seen = torch.zeros((), device=dev), 0
        for x, y in epoch_batches():
            x, y = x.to(dev), y.to(dev)
            w = curve_weights(kind, float(torch.rand((), generator=t_gen)))
            params = combine(w, a_params, mid, b_params)
            out = functional_call(template, (params, buffers), (x,))
            loss = F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_hook is not None:
                grad_hook(list(mid.values()))
            opt.step()
            sched.step()
            loss_sum += loss.detach() * len(y)
            seen += len(y)
        history.append(float(loss_sum) / max(1, seen))
        if not math.isfinite(history[-1]):
            raise FloatingPointError(
                f"curve training diverged at epoch {epoch + 1} (loss {history[-1]}); lower lr ({lr})"
            )

    # M's buffers stay at the linear midpoint: they are never used (see Curve.at).
    out_dev = device_of(net_a)
    mid_state = {k: v.detach().to(out_dev).clone() for k, v in init.state_dict().items()}
    mid_state.update({n: p.detach().to(out_dev).clone() for n, p in mid.items()})
    return Curve(
        copy.deepcopy(net_a).eval(),
        copy.deepcopy(net_b).eval(),
        mid_state,
        kind,
        history=history,
        seconds=time.perf_counter() - start,
        train=train,
    )


def curve_profile(
    curve: Curve,
    train: Dataset | BatchPlan,
    test: Dataset | BatchPlan,
    ts: int | Sequence[float] = 11,
    *,
    batch_size: int = 500,
    workers: Workers = 1,
) -> pd.DataFrame:
    """Loss and accuracy along the curve: a DataFrame (t, split, loss, acc).

    At every t the BN statistics (if any) are re-estimated on ``train``; every pass (that
    reset and both evaluations) shards over ``workers``.
    """
    if not isinstance(curve, Curve):
        raise TypeError(f"curve_profile needs a Curve (got {type(curve).__name__})")
    grid = t_grid(ts)
    train_plan, test_plan = as_plan(train, batch_size), as_plan(test, batch_size)
    executor = resolve_executor(workers)
    rows = []
    for t in grid:
        net = curve.at(t, train_plan, workers=executor)
        for split, plan in (("train", train_plan), ("test", test_plan)):
            r = evaluate(net, plan, workers=executor)
            rows.append((t, split, r["loss"], r["acc"]))
    return pd.DataFrame(rows, columns=["t", "split", "loss", "acc"])


def curve_barriers(profile: pd.DataFrame, split: str = "test") -> dict[str, float]:
    """Barriers of one curve profile on ``split`` (the straight-line definitions of
    :func:`~repair_dist.barriers`, so curve and line numbers compare directly):

    * ``barrier_loss_max`` / ``barrier_acc_max``: the largest gap along t to the linear
      interpolation of the endpoint values (Git Re-Basin's barrier);
    * ``barrier_loss_mid`` / ``barrier_acc_mid``: the gap at t = 1/2 (the REPAIR code's).
    """
    missing = {"t", "split", "loss", "acc"} - set(profile.columns)
    if missing:
        raise ValueError(
            f"a curve profile needs columns t, split, loss, acc; missing {sorted(missing)}"
        )
    if split not in set(profile["split"]):
        raise ValueError(f"split {split!r} is not in the profile ({sorted(set(profile['split']))})")
    as_line = profile.rename(columns={"t": "alpha"}).assign(variant="curve")
    row = barriers(as_line, split=split).iloc[0]
    return {k: float(row[k]) for k in BARRIER_COLUMNS}
