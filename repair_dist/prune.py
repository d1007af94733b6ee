"""Magnitude pruning whose masks live on the net, and post-pruning repair (Qu & Horvath 2024).

What is prunable: the weight of every conv/linear layer that is a REPAIR point of the net's
permutation spec, i.e. every hidden layer. The classifier is *not* pruned: its outputs are the
logits, which have no per-channel statistics for REPAIR to restore, and removing a classifier
"filter" would delete a class. ``sparsity`` is always measured over these prunable weights.

Kinds (``PRUNE_KINDS``):

* ``global_l1`` - unstructured: the ``round(s * N)`` smallest |w| over all prunable weights.
* ``layer_l1``  - unstructured: the ``round(s * N_l)`` smallest |w| of every layer.
* ``filter_l1`` - structured, per layer (Li et al. 2017): the ``round(s * C_l)`` output filters
  with the smallest L1 norm; per layer because filter norms of layers with different fan-in are
  not comparable.
* ``filter_bn`` - structured, global (network slimming, Liu et al. 2017): the ``round(s * C)``
  filters with the smallest BatchNorm |gamma| over the whole net (BN makes gammas comparable);
  the largest-|gamma| filter of every layer is kept, so no layer is emptied.

A removed filter outputs nothing: its weight row, its bias and the weight *and* bias of the
BatchNorm that consumes it are masked to zero, so the channel is exactly 0 before the ReLU
(a BN channel with gamma = 0 would still output beta). Nets with LayerNorm are refused for
structured kinds, because LayerNorm mixes channels and a zero channel still shifts the others.

Masks are non-persistent buffers ``<tensor>_prune_mask`` on the pruned modules, enforced by
hooks that are plain module-level functions (so they survive ``copy.deepcopy`` and pickling
to Ray workers):

* a forward pre-hook zeroes the masked entries in place before every forward (an optimiser
  step or REPAIR's ``fold_affine`` can never bring a pruned weight back into a computation);
* a ``state_dict`` post-hook writes masked tensors (a saved checkpoint holds exact zeros);
* a ``load_state_dict`` post-hook re-masks after loading (``rd.interpolate`` of a pruned net).

The masks are not in the ``state_dict``, so a pruned net saves and loads with the existing
checkpoint code into a freshly built net of the same architecture; the zeros come back
exactly, and :func:`reattach_masks` turns them into masks again.
"""

from __future__ import annotations

import copy
import numbers
import time
from collections.abc import Iterator, Sequence

import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from .data.batches import BatchPlan, as_plan
from .metrics import evaluate
from .models.norms import ChannelLayerNorm
from .passes import CoMoments, StatsDict, Workers, resolve_executor
from .perm.activation import check_same_architecture
from .perm.spec import PermutationSpec, RepairPoint, permutation_spec
from .repair import NORM_EPS, endpoint_statistics, repair
from .variants import PRUNE_KINDS, PRUNE_REPAIR_VARIANTS, STRUCTURED_KINDS

MASK_SUFFIX = "_prune_mask"


# --- masks on the net --------------------------------------------------------------------------


def _masks(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    for name, buf in module.named_buffers(recurse=False, remove_duplicate=False):
        if name.endswith(MASK_SUFFIX):
            yield name[: -len(MASK_SUFFIX)], buf


@torch.no_grad()
def _apply_module_masks(module: nn.Module) -> None:
    for tensor_name, mask in _masks(module):
        tensor = getattr(module, tensor_name)
        if tensor is not None:
            tensor.masked_fill_(~mask.to(tensor.device), 0.0)


def _mask_before_forward(module: nn.Module, _args: tuple) -> None:
    _apply_module_masks(module)


def _mask_state_dict(module: nn.Module, state_dict: dict, prefix: str, _meta: dict) -> None:
    for tensor_name, mask in _masks(module):
        key = prefix + tensor_name
        if key in state_dict:
            state_dict[key] = state_dict[key].masked_fill(~mask.to(state_dict[key].device), 0.0)


def _mask_after_load(module: nn.Module, _incompatible: object) -> None:
    _apply_module_masks(module)


def _has_mask_hooks(module: nn.Module) -> bool:
    return _mask_before_forward in module._forward_pre_hooks.values()


def set_mask(module: nn.Module, tensor_name: str, keep: torch.Tensor) -> None:
    """Keep only the ``True`` entries of ``module.<tensor_name>``, now and after every change."""
    tensor = getattr(module, tensor_name)
    # own, contiguous storage: named_buffers() skips a tensor registered twice
    keep = keep.to(device=tensor.device, dtype=torch.bool).clone(
        memory_format=torch.contiguous_format
    )
    name = tensor_name + MASK_SUFFIX
    if hasattr(module, name):
        keep = keep & getattr(module, name)  # pruning again never un-prunes
        setattr(module, name, keep)
    else:
        module.register_buffer(name, keep, persistent=False)
    if not _has_mask_hooks(module):
        module.register_forward_pre_hook(_mask_before_forward)
        module.register_state_dict_post_hook(_mask_state_dict)
        module.register_load_state_dict_post_hook(_mask_after_load)
    _apply_module_masks(module)


def apply_masks(net: nn.Module) -> nn.Module:
    """Zero every masked entry of ``net`` in place (the hooks do this on every forward too)."""
    for m in net.modules():
        _apply_module_masks(m)
    return net


def is_pruned(net: nn.Module) -> bool:
    return any(True for m in net.modules() for _ in _masks(m))


# --- what is prunable --------------------------------------------------------------------------


def prunable_points(net: nn.Module, spec: PermutationSpec | None = None) -> list[RepairPoint]:
    """The REPAIR points of the net: its hidden conv/linear layers (the classifier excluded)."""
    spec = spec or permutation_spec(net)
    modules = dict(net.named_modules())
    return [
        rp
        for rp in spec.repair_points
        if isinstance(modules[rp.module], (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
    ]


def measured_sparsity(
    net: nn.Module, unit: str = "weight", *, spec: PermutationSpec | None = None
) -> float:
    """Fraction of the prunable weights that are exactly zero (``unit="weight"``), or of the
    prunable output filters whose whole weight row is zero (``unit="filter"``)."""
    if unit not in ("weight", "filter"):
        raise ValueError(f"unknown sparsity unit {unit!r}; choose weight or filter")
    modules = dict(net.named_modules())
    zeros = total = 0
    for rp in prunable_points(net, spec):
        w = modules[rp.module].weight.detach()
        if unit == "weight":
            zeros += int((w == 0).sum())
            total += w.numel()
        else:
            zeros += int((w.flatten(1) == 0).all(1).sum())
            total += w.shape[0]
    return zeros / max(total, 1)


# --- pruning ----------------------------------------------------------------------------------


def _check_prune_args(net: nn.Module, sparsity: float, kind: str, points) -> None:
    if kind not in PRUNE_KINDS:
        raise ValueError(f"unknown pruning kind {kind!r}; choose one of {', '.join(PRUNE_KINDS)}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"sparsity must be a number in [0, 1) (got {sparsity!r})")
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be in [0, 1) (got {sparsity!r})")
    if not points:
        raise ValueError(f"{type(net).__name__} has no prunable conv/linear layers")
    if kind in STRUCTURED_KINDS and any(isinstance(m, ChannelLayerNorm) for m in net.modules()):
        raise ValueError(
            f"{kind} cannot remove filters of a LayerNorm net: LayerNorm mixes channels, so a "
            "removed filter would still change the others; use global_l1 or layer_l1"
        )
    if kind == "filter_bn":
        missing = [rp.module for rp in points if rp.norm is None]
        if missing:
            raise ValueError(
                f"filter_bn needs a BatchNorm after every prunable layer, but {missing[0]} has "
                "none (a net without BN); use filter_l1"
            )


def _smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of exactly ``k`` smallest entries (ties broken by position)."""
    drop = torch.zeros(scores.numel(), dtype=torch.bool)
    if k > 0:
        idx = torch.topk(scores.flatten().double(), k, largest=False, sorted=False).indices
        drop[idx] = True
    return drop.view(scores.shape)


def _remove_filters(modules: dict[str, nn.Module], rp: RepairPoint, drop: torch.Tensor) -> None:
    keep = ~drop
    layer = modules[rp.module]
    set_mask(
        layer, "weight", keep.view((-1,) + (1,) * (layer.weight.dim() - 1)).expand_as(layer.weight)
    )
    if layer.bias is not None:
        set_mask(layer, "bias", keep)
    if rp.norm is not None:
        bn = modules[rp.norm]
        if getattr(bn, "weight", None) is not None:
            set_mask(bn, "weight", keep)
        if getattr(bn, "bias", None) is not None:
            set_mask(bn, "bias", keep)


def prune(net: nn.Module, sparsity: float, kind: str = "global_l1") -> nn.Module:
    """A pruned copy of ``net`` (see the module docstring for kinds, masks and what is pruned).

    The requested sparsity holds exactly: ``round(sparsity * N)`` weights (unstructured; per
    layer for ``layer_l1``) or ``round(sparsity * C)`` filters (structured) are removed.
    """
    points = prunable_points(net)
    _check_prune_args(net, sparsity, kind, points)
    out = copy.deepcopy(net)
    modules = dict(out.named_modules())
    weights = [modules[rp.module].weight.detach() for rp in points]
    s = float(sparsity)
    if kind == "global_l1":
        flat = torch.cat([w.abs().flatten().cpu() for w in weights])
        drop = _smallest(flat, round(s * flat.numel())).split([w.numel() for w in weights])
        for rp, w, d in zip(points, weights, drop, strict=True):
            set_mask(modules[rp.module], "weight", ~d.view(w.shape))
    elif kind == "layer_l1":
        for rp, w in zip(points, weights, strict=True):
            d = _smallest(w.abs().cpu(), round(s * w.numel()))
            set_mask(modules[rp.module], "weight", ~d)
    else:
        if kind == "filter_l1":
            scores = [w.abs().flatten(1).sum(1).cpu() for w in weights]
            drops = [_smallest(sc, round(s * sc.numel())) for sc in scores]
        else:
            # Network slimming with a floor: each layer's largest-|gamma| filter is never a
            # candidate, so no layer is emptied (an empty layer disconnects the net).
            scores = [modules[rp.norm].weight.detach().abs().cpu().double() for rp in points]
            k = round(s * sum(len(x) for x in scores))
            if k > sum(len(x) - 1 for x in scores):
                raise ValueError(
                    f"filter_bn at sparsity {s:g} would leave some layer without filters; "
                    "use a lower sparsity"
                )
            for sc in scores:
                sc[sc.argmax()] = float("inf")
            flat = torch.cat(scores)
            drops = list(_smallest(flat, k).split([len(x) for x in scores]))
        for rp, d in zip(points, drops, strict=True):
            if bool(d.all()):
                raise ValueError(
                    f"{kind} at sparsity {s:g} would remove every filter of {rp.module} "
                    f"({d.numel()} channels) and disconnect the net; use a lower sparsity"
                )
        for rp, d in zip(points, drops, strict=True):
            _remove_filters(modules, rp, d)
    return out


def reattach_masks(net: nn.Module) -> nn.Module:
    """Masks for a pruned net loaded from a checkpoint (masks are not in the state_dict).

    Every exactly-zero prunable weight is masked; a filter whose weight row, bias and BN
    weight and bias are all exactly zero is masked as a removed filter. Masking entries that
    are already zero never changes the function, so this is safe on any net.
    """
    modules = dict(net.named_modules())
    for rp in prunable_points(net):
        layer = modules[rp.module]
        w = layer.weight.detach()
        set_mask(layer, "weight", w != 0)
        dead = (w.flatten(1) == 0).all(1)
        if layer.bias is not None:
            dead &= layer.bias.detach() == 0
        bn = modules[rp.norm] if rp.norm is not None else None
        if bn is not None and getattr(bn, "weight", None) is not None:
            dead &= (bn.weight.detach() == 0) & (bn.bias.detach() == 0)
        if bool(dead.any()):
            _remove_filters(modules, rp, dead.cpu())
    return net


# --- post-pruning repair ----------------------------------------------------------------------


def _removed_filters(net: nn.Module, rp: RepairPoint) -> torch.Tensor | None:
    """Filters removed by structured pruning (their bias is masked; unstructured never is)."""
    layer = dict(net.named_modules())[rp.module]
    mask = getattr(layer, "bias" + MASK_SUFFIX, None)
    if mask is None or bool(mask.all()):
        return None
    return ~mask


def _pruning_goal(stats: CoMoments, removed: torch.Tensor | None) -> CoMoments:
    """The dense net's statistics as REPAIR's goal for the pruned net.

    REPAIR's correction divides by sqrt(var + eps) (BatchNorm's epsilon); the goal variance
    gets the same eps, so a channel that already has the dense statistics is an exact fixed
    point (an unpruned net keeps its function). Removed filters get goal mean 0 and std 0, so
    they stay at zero.
    """
    cm = stats.cm + NORM_EPS * stats.n
    mean = stats.mean
    if removed is not None:
        keep = (~removed).to(stats.mean.dtype)
        mean, cm = mean * keep, cm * keep
    return CoMoments(stats.n, mean, cm)


def check_same_net(pruned: nn.Module, dense: nn.Module) -> None:
    """One readable line if ``pruned`` is not a pruned copy of ``dense``'s architecture."""
    cfg_p, cfg_d = getattr(pruned, "config", None), getattr(dense, "config", None)
    if cfg_p is not None and cfg_d is not None and cfg_p != cfg_d:
        diff = sorted(k for k in set(cfg_p) | set(cfg_d) if cfg_p.get(k) != cfg_d.get(k))
        detail = ", ".join(f"{k}: {cfg_p.get(k)!r} vs {cfg_d.get(k)!r}" for k in diff[:3])
        raise ValueError(f"pruned and dense nets differ in architecture ({detail})")
    try:
        check_same_architecture(pruned, dense)
    except ValueError as e:
        raise ValueError(f"pruned and dense nets differ in architecture ({e})") from None


def repair_pruned(
    pruned: nn.Module,
    dense: nn.Module,
    train: Dataset | BatchPlan,
    variant: str = "full",
    *,
    goal_stats: StatsDict | None = None,
    batch_size: int = 500,
    workers: Workers = 1,
) -> nn.Module:
    """Post-pruning repair: REPAIR with one endpoint, the dense net (Qu & Horvath 2024).

    Every REPAIR point of ``pruned`` is renormalised to the dense net's per-channel statistics
    on ``train`` (``full``: mean and std, ``rescale``: std only, ``reshift``: mean only); on BN
    points this is a BatchNorm statistics reset of the pruned net. Removed filters are given
    goal mean 0 and std 0, so they stay at zero. The masks travel with the copy and are
    applied at the end, so the sparsity of ``pruned`` holds exactly.
    """
    if variant not in PRUNE_REPAIR_VARIANTS:
        raise ValueError(
            f"unknown post-pruning repair variant {variant!r}; "
            f"choose one of {', '.join(PRUNE_REPAIR_VARIANTS)}"
        )
    check_same_net(pruned, dense)
    spec = permutation_spec(pruned)
    plan = as_plan(train, batch_size)
    if goal_stats is None:
        goal_stats = endpoint_statistics([dense], plan, spec=spec, workers=workers)
    goals = StatsDict(goal_stats.items())
    for rp in spec.repair_points:
        if rp.norm is None and rp.module in goals:
            removed = _removed_filters(pruned, rp)
            goals[rp.module] = _pruning_goal(
                goals[rp.module], None if removed is None else removed.cpu()
            )
    out = repair(
        pruned, [dense], [1.0], plan, variant, spec=spec, goal_stats=goals, workers=workers
    )
    return apply_masks(out)


#: Columns of the rows :func:`pruning_rows` returns (DESIGN.md §5 ``pruning`` without the
#: ``sweep`` and model columns, which the sweep adds).
PRUNING_COLUMNS = (
    "endpoint_key",
    "kind",
    "sparsity",
    "variant",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "measured_sparsity",
    "seconds",
)


def pruning_rows(
    dense: nn.Module,
    train: Dataset | BatchPlan,
    test: Dataset | BatchPlan,
    *,
    kinds: Sequence[str] = ("global_l1",),
    sparsities: Sequence[float] = (0.8, 0.9, 0.95),
    variants: Sequence[str] = PRUNE_REPAIR_VARIANTS,
    endpoint_key: str = "",
    batch_size: int = 500,
    workers: Workers = 1,
) -> pd.DataFrame:
    """Prune ``dense`` at every (kind, sparsity), repair it, and evaluate every variant.

    Variants per (kind, sparsity): ``dense`` (once per kind and sparsity, for plotting),
    ``pruned`` and ``repaired-<variant>``. ``seconds`` is the time to make that variant
    (pruning, or pruning plus repair) without evaluation. The dense net's statistics are
    gathered once and reused by every repair.
    """
    for kind in kinds:
        if kind not in PRUNE_KINDS:
            raise ValueError(
                f"unknown pruning kind {kind!r}; choose one of {', '.join(PRUNE_KINDS)}"
            )
    for v in variants:
        if v not in PRUNE_REPAIR_VARIANTS:
            raise ValueError(
                f"unknown post-pruning repair variant {v!r}; "
                f"choose one of {', '.join(PRUNE_REPAIR_VARIANTS)}"
            )
    for s in sparsities:
        if not 0.0 <= float(s) < 1.0:
            raise ValueError(f"sparsity must be in [0, 1) (got {s!r})")
    executor = resolve_executor(workers)
    train_plan, test_plan = as_plan(train, batch_size), as_plan(test, batch_size)
    spec = permutation_spec(dense)
    goal_stats = endpoint_statistics([dense], train_plan, spec=spec, workers=executor)
    rows = []

    def add(net: nn.Module, kind: str, sparsity: float, variant: str, seconds: float) -> None:
        tr = evaluate(net, train_plan, workers=executor)
        te = evaluate(net, test_plan, workers=executor)
        sp = measured_sparsity(net, spec=spec)
        rows.append(
            (endpoint_key, kind, float(sparsity), variant)
            + (tr["loss"], tr["acc"], te["loss"], te["acc"], sp, seconds)
        )

    dense_eval = None
    for kind in kinds:
        for sparsity in sparsities:
            if dense_eval is None:
                add(dense, kind, sparsity, "dense", 0.0)
                dense_eval = rows[-1]
            else:
                rows.append((*dense_eval[:1], kind, float(sparsity), *dense_eval[3:]))
            t0 = time.perf_counter()
            pruned = prune(dense, sparsity, kind)
            t_prune = time.perf_counter() - t0
            add(pruned, kind, sparsity, "pruned", t_prune)
            for v in variants:
                t0 = time.perf_counter()
                net = repair_pruned(
                    pruned, dense, train_plan, v, goal_stats=goal_stats, workers=executor
                )
                add(net, kind, sparsity, f"repaired-{v}", t_prune + time.perf_counter() - t0)
    return pd.DataFrame(rows, columns=list(PRUNING_COLUMNS))


__all__: Sequence[str] = (
    "PRUNE_KINDS",
    "PRUNE_REPAIR_VARIANTS",
    "PRUNING_COLUMNS",
    "apply_masks",
    "is_pruned",
    "measured_sparsity",
    "prunable_points",
    "prune",
    "pruning_rows",
    "reattach_masks",
    "repair_pruned",
)
