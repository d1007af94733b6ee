"""Training loop for endpoints: SGD (or Adam), warmup + cosine / one-cycle, AMP on GPU.

Endpoints must be reproducible from ``(config, seed)`` alone, because the sweep deduplicates
and re-creates them by key: the loop seeds torch, shuffles with its own seeded generator, and
on CPU two calls with the same seed give bit-identical weights. In-memory
:class:`~torch.utils.data.TensorDataset`s (digits, Fashion-MNIST, CIFAR-10, synthetic) are
indexed directly on the training device, with no DataLoader, which is what makes many small
endpoints cheap.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, TensorDataset

from .variants import OPTIMIZERS

SCHEDULES = ("cosine", "onecycle")
DEFAULT_LR = {"sgd": 0.03, "adam": 1e-3}
"""Peak learning rates. SGD 0.03 trains 6-8 layer plain digits MLPs for every seed tried; 0.07
sends some seeds to dead nets and 0.1 diverges, so the default keeps a 2x margin."""

Callback = Callable[[int, nn.Module, dict[str, float]], Any]


def lr_factor(step: int, total: int, schedule: str, warmup: int) -> float:
    """Multiplier of the peak lr at ``step`` (0-based) of ``total`` steps.

    ``cosine``: linear warmup over ``warmup`` steps, then cosine decay to zero; deep plain
    nets at the start of training need the warmup. ``onecycle``: linear up to the peak at 25%
    of training, then linearly down to zero (the REPAIR/ResNet recipe).
    """
    if schedule == "cosine":
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "onecycle":
        peak = max(1, round(0.25 * total))
        if step < peak:
            return (step + 1) / peak
        return max(0.0, (total - step) / max(1, total - peak))
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


def tensor_batches(
    data: TensorDataset, batch_size: int, device: torch.device, gen: torch.Generator
) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """Per-epoch shuffled batches sliced from tensors moved to ``device`` once."""
    x, y = (t.to(device) for t in data.tensors[:2])
    n = len(x)
    steps = max(1, n // batch_size)  # drop the ragged tail: BN needs > 1 example

    def epoch() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(n, generator=gen).to(device)
        for k in range(steps):
            idx = order[k * batch_size : (k + 1) * batch_size]
            yield x[idx], y[idx]

    return epoch


def loader_batches(
    data: Dataset, batch_size: int, gen: torch.Generator, workers: int
) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    loader = DataLoader(
        data,
        batch_size=batch_size,
        sampler=RandomSampler(data, generator=gen),
        drop_last=len(data) > batch_size,  # type: ignore[arg-type]
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        generator=gen,
    )
    return lambda: iter(loader)


@torch.no_grad()
def revive_collapsed(net: nn.Module) -> int:
    """Call ``revive_collapsed()`` on every module that has one (post-shifted BN)."""
    total = 0
    for m in net.modules():
        fn = getattr(m, "revive_collapsed", None)
        if callable(fn):
            total += int(fn() or 0)
    return total


def train_model(
    net: nn.Module,
    train_data: Dataset,
    *,
    epochs: int = 40,
    seed: int = 0,
    batch_size: int = 64,
    lr: float | None = None,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    schedule: str = "cosine",
    warmup_epochs: float = 1.0,
    label_smoothing: float = 0.0,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    loader_workers: int = 0,
    log_every: int | None = None,
    callback: Callback | None = None,
) -> nn.Module:
    """Train ``net`` in place on ``train_data`` and return it in eval mode (on ``device``).

    Defaults (batch 64, SGD lr 0.03, momentum 0.9, wd 5e-4, one warmup epoch, cosine) are
    tuned on digits: deep plain He-init MLPs (6-8 x 64-128) and small BN conv nets reach
    >= 95% test accuracy in 40 epochs for every seed tried. ``callback(epoch, net, stats)``
    runs after every epoch (``stats``: loss, acc, lr, revived, seconds); returning True stops
    training early. Weight decay applies to every parameter, as in the REPAIR code.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0 (got {epochs})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if len(train_data) == 0:  # type: ignore[arg-type]
        raise ValueError("train_data is empty")

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dev = torch.device(
        device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    use_amp = (dev.type == "cuda") if amp is None else bool(amp and dev.type == "cuda")
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    net.to(dev)
    if isinstance(train_data, TensorDataset):
        epoch_batches = tensor_batches(train_data, batch_size, dev, gen)
        steps_per_epoch = max(1, len(train_data) // batch_size)
    else:
        epoch_batches = loader_batches(train_data, batch_size, gen, loader_workers)
        n = len(train_data)  # type: ignore[arg-type]
        steps_per_epoch = max(1, n // batch_size) if n > batch_size else 1

    peak_lr = DEFAULT_LR[optimizer] if lr is None else lr
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            net.parameters(),
            lr=peak_lr,
            momentum=momentum,
            weight_decay=weight_decay,
            nesterov=momentum > 0,
        )
    else:
        opt = torch.optim.AdamW(net.parameters(), lr=peak_lr, weight_decay=weight_decay)
    total = epochs * steps_per_epoch
    warmup = min(total, round(warmup_epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(min(step, total - 1), total, schedule, warmup)
    )

    for epoch in range(epochs):
        net.train()
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev, dtype=torch.long)
        seen = 0
        for x, y in epoch_batches():
            x = x.to(dev, non_blocking=True)
            y = y.to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
                out = net(x)
                loss = F.cross_entropy(out, y, label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            loss_sum += loss.detach().float() * len(y)
            correct += (out.detach().argmax(1) == y).sum()
            seen += len(y)
        revived = revive_collapsed(net)
        stats = {
            "loss": float(loss_sum) / max(1, seen),
            "acc": float(correct) / max(1, seen),
            "lr": opt.param_groups[0]["lr"],
            "revived": float(revived),
            "seconds": time.perf_counter() - start,
        }
        if not math.isfinite(stats["loss"]):
            raise FloatingPointError(
                f"training diverged at epoch {epoch + 1} (loss {stats['loss']}); lower lr (peak {peak_lr})"
            )
        if log_every and ((epoch + 1) % log_every == 0 or epoch + 1 == epochs):
            print(
                f"epoch {epoch + 1:>3}/{epochs}  loss {stats['loss']:.4f}  acc {stats['acc']:.4f}  "
                f"lr {stats['lr']:.4g}  revived {revived}  {stats['seconds']:.2f}s",
                flush=True,
            )
        if callback is not None and callback(epoch, net, stats) is True:
            break
    return net.eval()
