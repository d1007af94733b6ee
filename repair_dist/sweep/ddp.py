"""Data-parallel endpoint training on Ray Train (``TorchTrainer``), for big recipes.

An endpoint whose recipe asks for ``train_workers > 1`` is trained with DistributedDataParallel
on that many Ray Train workers (one per GPU on GPU clusters; gloo on CPU). Every rank builds
the same initial net from the endpoint's seed, trains :func:`repair_dist.train.train_model` on
its own equal-sized, strided shard of the training set (DDP averages the gradients, so the
effective batch is ``world x batch_size``), and rank 0 hands the weights back as a Ray Train
checkpoint. The result is a plain ``nn.Module``, stored like any other endpoint.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch
from torch import nn

from ..data import load_dataset
from ..location import Location
from .config import EndpointConfig

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
        train_loop_config={"endpoint": ep.__dict__.copy(), "data_root": data_root},
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
