"""Figures are drawn from the results tables alone and land as valid PNGs: one per trial for its
curves, and for a sweep one per architecture dimension that varies (or one bar chart when
none does)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from repair_dist.sweep.plots import plot_sweep, plot_trial_curves
from repair_dist.sweep.results import read_table, write_rows

VARIANTS = ("naive", "aligned", "full", "rescale")


def _assert_png(path: str | Path) -> None:
    path = Path(path)
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.size[0] > 200 and img.size[1] > 100


def _curves(key: str = "t0") -> pd.DataFrame:
    rows = []
    for i, v in enumerate(VARIANTS):
        for a in np.linspace(0, 1, 5):
            for split, shift in (("train", 0.0), ("test", 0.1)):
                bump = (4 - i) * a * (1 - a)
                rows.append(
                    {
                        "trial_key": key,
                        "method": "weight",
                        "variant": v,
                        "alpha": a,
                        "split": split,
                        "loss": 0.2 + shift + bump,
                        "acc": 0.95 - shift - bump / 4,
                    }
                )
    return pd.DataFrame(rows)


def _trials(widths=(1.0, 2.0, 4.0), norms=("none", "bn"), pairs=((0, 1), (2, 3))) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for w in widths:
        for n in norms:
            for sa, sb in pairs:
                for method in ("activation", "weight"):
                    for i, v in enumerate(VARIANTS):
                        b = (4 - i) / (w * 10) + rng.normal(0, 0.01)
                        rows.append(
                            {
                                "trial_key": f"w{w:g}{n}s{sa}{method}",
                                "endpoint_a": "a",
                                "endpoint_b": "b",
                                "model": "resnet20",
                                "width": w,
                                "depth": 20,
                                "norm": n,
                                "dataset": "digits",
                                "method": method,
                                "variant": v,
                                "acc_a": 0.9,
                                "acc_b": 0.9,
                                "loss_a": 0.3,
                                "loss_b": 0.3,
                                "acc_mid": 0.9 - b,
                                "loss_mid": 0.3 + 2 * b,
                                "barrier_acc_mid": b,
                                "barrier_loss_mid": 2 * b,
                                "barrier_loss_max": 2 * b,
                                "barrier_acc_max": b,
                                "reduction_vs_aligned": 0.5,
                                "reduction_loss_vs_aligned": 0.5,
                                "seconds": 1.0,
                                "seed_a": sa,
                                "seed_b": sb,
                            }
                        )
    return pd.DataFrame(rows)


def test_trial_curves_png(tmp_path: Path) -> None:
    path = plot_trial_curves(_curves(), tmp_path / "plots" / "t0.png", "mlp w64: weight matching")
    assert path == str(tmp_path / "plots" / "t0.png")
    _assert_png(path)
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["t0.png"]  # no temporaries


def test_trial_curves_refuse_several_trials_or_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one trial"):
        plot_trial_curves(pd.concat([_curves("a"), _curves("b")]), tmp_path / "x.png")
    with pytest.raises(ValueError, match="needs column"):
        plot_trial_curves(_curves().drop(columns="split"), tmp_path / "x.png")
    with pytest.raises(ValueError, match="no curve rows"):
        plot_trial_curves(_curves().iloc[:0], tmp_path / "x.png")


def test_sweep_plots_one_figure_per_varying_dimension_and_method(tmp_path: Path) -> None:
    paths = plot_sweep(_trials(), tmp_path / "out")
    names = sorted(Path(p).name for p in paths)
    assert names == [
        "barrier_vs_norm_activation.png",
        "barrier_vs_norm_weight.png",
        "barrier_vs_width_activation.png",
        "barrier_vs_width_weight.png",
    ]
    for p in paths:
        _assert_png(p)


def test_sweep_plots_read_back_from_parquet(tmp_path: Path) -> None:
    """The input is what read_table gives (pandas 3 strings, nullable ints as floats)."""
    trials = _trials(widths=(1.0, 2.0), norms=("bn",))
    for key, rows in trials.groupby("trial_key"):
        write_rows(tmp_path / "results", "trials", "w", str(key), rows)
    table = read_table(tmp_path / "results", "trials", "w")
    paths = plot_sweep(table, tmp_path / "plots")
    assert sorted(Path(p).name for p in paths) == [
        "barrier_vs_width_activation.png",
        "barrier_vs_width_weight.png",
    ]
    for p in paths:
        _assert_png(p)


def test_a_sweep_varying_nothing_gets_one_bar_chart(tmp_path: Path) -> None:
    trials = _trials(widths=(2.0,), norms=("bn",), pairs=((0, 1),))  # a single pair: no std
    (path,) = plot_sweep(trials.assign(depth=np.nan), tmp_path)
    assert Path(path).name == "barriers.png"
    _assert_png(path)


def test_several_models_get_their_own_figures(tmp_path: Path) -> None:
    a = _trials(widths=(1.0, 2.0), norms=("bn",))
    b = _trials(widths=(0.5, 1.0), norms=("bn",)).assign(model="vgg", depth=11)
    names = sorted(Path(p).name for p in plot_sweep(pd.concat([a, b]), tmp_path))
    assert names == [
        "barrier_vs_width_resnet20_activation.png",
        "barrier_vs_width_resnet20_weight.png",
        "barrier_vs_width_vgg_activation.png",
        "barrier_vs_width_vgg_weight.png",
    ]


def test_nothing_to_plot(tmp_path: Path) -> None:
    assert plot_sweep(_trials().iloc[:0], tmp_path) == []
    with pytest.raises(ValueError, match="barrier_acc_mid"):
        plot_sweep(_trials().drop(columns="barrier_acc_mid"), tmp_path)
