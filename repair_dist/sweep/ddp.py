"""Data-parallel endpoint training on Ray Train (``TorchTrainer``), for big recipes.

An endpoint whose recipe asks for ``train_workers > 1`` is trained with DistributedDataParallel
on that many Ray Train workers (one per GPU on GPU clusters; gloo on CPU). Every rank builds
the same initial net from the endpoint's seed, trains :func:`repair_dist.train.train_model` on
its own equal-sized, strided shard of the training set (DDP averages the gradients, so the
effective batch is ``world x batch_size``), and rank 0 hands the weights back as a Ray Train
checkpoint. The result is a plain ``nn.Module``, stored like any other endpoint.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..data import load_dataset
from ..location import Location
from .config import EndpointConfig

if TYPE_CHECKING:
    from ..curves import Curve

_WEIGHTS = "model.pt"


def _train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    from ray.train.torch import prepare_model
    from torch.utils.data import Subset

    from ..models import build_model
    from ..train import train_model

    ep = EndpointConfig(**config["endpoint"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    train, _ = load_dataset(ep.dataset, config["data_root"], limit=ep.data_limit)
    torch.manual_seed(ep.seed)
    net = prepare_model(build_model(ep.model, **ep.model_kwargs(config["data_root"])))
    usable = len(train) - len(train) % world  # equal shards: DDP needs equal step counts
    shard = Subset(train, range(rank, usable, world))
    device = next(net.parameters()).device
    train_model(
        net,
        shard,
        epochs=ep.epochs,
        seed=ep.seed,
        batch_size=ep.batch_size,
        lr=ep.lr,
        device=device,
    )
    if rank != 0:
        ray.train.report({"rank": rank})
        return
    module = net.module if hasattr(net, "module") else net
    with tempfile.TemporaryDirectory() as folder:
        state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        torch.save(state, os.path.join(folder, _WEIGHTS))
        ray.train.report({"rank": rank}, checkpoint=ray.train.Checkpoint.from_directory(folder))


def train_data_parallel(
    ep: EndpointConfig,
    *,
    data_root: str | None,
    cpus_per_worker: float,
    gpus_per_worker: float,
    storage: Location,
) -> nn.Module:
    """Train ``ep`` on ``ep.train_workers`` Ray Train workers; returns the trained net (CPU)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ..models import build_model

    use_gpu = gpus_per_worker > 0
    resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"endpoint": asdict(ep), "data_root": data_root},
        scaling_config=ScalingConfig(
            num_workers=ep.train_workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(name=f"train-{ep.key()}", **storage.ray_storage()),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"data-parallel training of endpoint {ep.key()} returned no weights")
    net = build_model(ep.model, **ep.model_kwargs(data_root))
    with result.checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, _WEIGHTS), weights_only=True, map_location="cpu")
    net.load_state_dict(state)
    return net.eval()


# --------------------------------------------------------------------------------------------
# Data-parallel curve fitting (issue 10): the same recipe, M's gradients averaged over ranks
# --------------------------------------------------------------------------------------------

_MID = "mid.pt"


def _average_gradients(world: int) -> Callable[[Sequence[torch.Tensor]], None]:
    import torch.distributed as dist

    def hook(params: Sequence[torch.Tensor]) -> None:
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(world)

    return hook


def _check_ranks_agree(mid: dict[str, torch.Tensor]) -> None:
    """Every rank must hold the same M (same start, same averaged steps); fail loudly if not."""
    import torch.distributed as dist

    flat = torch.cat([v.detach().reshape(-1).double() for v in mid.values()])
    mine = torch.stack([flat.sum(), flat.abs().sum(), (flat * flat).sum()])
    everyone = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, mine)
    if not all(torch.equal(other, mine) for other in everyone):
        raise RuntimeError("data-parallel curve ranks diverged: their middle points differ")


def _curve_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: fit_curve on this rank's shard, gradients averaged."""
    import ray.train
    from ray.train.torch import get_device
    from torch.utils.data import Subset

    from ..curves import fit_curve
    from ..models import build_model

    ep = EndpointConfig(**config["endpoint"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    train, _ = load_dataset(ep.dataset, config["data_root"], limit=ep.data_limit)
    device = get_device()
    nets = []
    for state in (config["state_a"], config["state_b"]):
        net = build_model(**config["model"])
        net.load_state_dict(state)
        nets.append(net.to(device))
    usable = len(train) - len(train) % world  # equal shards: every rank takes the same steps
    curve = fit_curve(
        nets[0],
        nets[1],
        Subset(train, range(rank, usable, world)),
        **config["fit"],
        grad_hook=_average_gradients(world),
    )
    _check_ranks_agree(curve.mid)
    metrics = {"rank": rank, "seconds": curve.seconds, "loss": curve.history[-1]}
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save({k: v.cpu() for k, v in curve.mid.items()}, os.path.join(folder, _MID))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def fit_curve_data_parallel(
    net_a: nn.Module,
    net_b: nn.Module,
    ep: EndpointConfig,
    *,
    kind: str,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    data_root: str | None,
    cpus_per_worker: float,
    gpus_per_worker: float,
    storage: Location,
) -> Curve:
    """:func:`repair_dist.fit_curve` on ``ep.train_workers`` Ray Train workers (DDP-style).

    Every rank starts from the same M (the linear midpoint), draws the same t per step, takes
    a batch of its own strided shard of ``ep``'s training set and averages M's gradients with
    the others (gloo on CPU, NCCL on GPU), so the effective batch is ``world x batch_size``,
    as in data-parallel endpoint training. The ranks' final M are checked to be identical.
    """
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ..curves import KINDS, Curve

    if kind not in KINDS:
        raise ValueError(f"unknown curve kind {kind!r}; choose one of {', '.join(KINDS)}")
    use_gpu = gpus_per_worker > 0
    resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if use_gpu else {})}
    fit = {"kind": kind, "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed}
    config = {
        "endpoint": asdict(ep),
        "data_root": data_root,
        "model": dict(net_a.config),
        "state_a": {k: v.detach().cpu() for k, v in net_a.state_dict().items()},
        "state_b": {k: v.detach().cpu() for k, v in net_b.state_dict().items()},
        "fit": fit,
    }
    # One Ray Train run per curve: named by the settings and both endpoints' weights.
    digest = hashlib.sha256(repr(sorted(fit.items())).encode())
    for state in (config["state_a"], config["state_b"]):
        for k, v in sorted(state.items()):
            digest.update(k.encode())
            digest.update(v.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    trainer = TorchTrainer(
        _curve_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=ep.train_workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=f"curve-{ep.key()}-{digest.hexdigest()[:12]}", **storage.ray_storage()
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"data-parallel curve fitting for {ep.key()} returned no weights")
    with result.checkpoint.as_directory() as folder:
        mid = torch.load(os.path.join(folder, _MID), weights_only=True, map_location="cpu")
    full = {k: v.detach().cpu().clone() for k, v in net_a.state_dict().items()}
    full.update(mid)
    seconds = float(result.metrics.get("seconds", 0.0))
    return Curve(net_a, net_b, full, kind, seconds=seconds)
