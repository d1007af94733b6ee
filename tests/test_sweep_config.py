"""A sweep is checked before anything is scheduled: every mistake in it is one line of one
error, naming its field, instead of a failure an hour into the sweep (or a trial that waits
forever for a GPU). A valid sweep expands into deduplicated endpoints and trials whose keys
are stable, so a rerun finds its earlier work."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from repair_dist import store as store_mod
from repair_dist.data.datasets import FASHION_MNIST_ROOT
from repair_dist.models import build_model
from repair_dist.store import CheckpointStore
from repair_dist.sweep import validation as validation_mod
from repair_dist.sweep.config import ArchGrid, EndpointConfig, Sweep, SweepConfigError, TrialSpec
from repair_dist.sweep.validation import validate_sweep

MLP = ArchGrid("mlp", widths=(64, 128), depths=(6,), norms=("none", "bn"))
GOOD = Sweep(name="quick.v1", dataset="digits", archs=(MLP,), seeds=(0, 1, 2, 3), epochs=3)


def _problems(sweep: Sweep, **kwargs) -> list[str]:
    with pytest.raises(SweepConfigError) as err:
        validate_sweep(sweep, **kwargs)
    assert str(err.value).count("\n  - ") == len(err.value.problems)
    return err.value.problems


def _one_problem(sweep: Sweep, field: str, *needles: str, **kwargs) -> str:
    """Exactly one problem, on ``field``, mentioning every needle."""
    problems = _problems(sweep, **kwargs)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{field}:"), problems[0]
    for needle in needles:
        assert needle in problems[0], (needle, problems[0])
    return problems[0]


# ---------------------------------------------------------------------------------- expansion


def test_a_good_sweep_validates_with_and_without_a_cluster() -> None:
    validate_sweep(GOOD)
    validate_sweep(GOOD, cluster_resources={"CPU": 2.0, "memory": 1e9})


def test_seeds_pair_up_consecutively_unless_pairs_are_given() -> None:
    assert GOOD.seed_pairs() == [(0, 1), (2, 3)]
    explicit = replace(GOOD, pairs=((0, 1), (0, 2), (1, 2)))
    assert explicit.seed_pairs() == [(0, 1), (0, 2), (1, 2)]
    assert [e.seed for e in explicit.endpoints()[:3]] == [0, 1, 2]


def test_endpoints_are_deduplicated_in_grid_order() -> None:
    again = ArchGrid("mlp", widths=(128,), depths=(None,), norms=("bn",))  # 6 is mlp's default
    sweep = replace(GOOD, archs=(MLP, again), pairs=((0, 1), (0, 2)))
    endpoints = sweep.endpoints()
    assert len(endpoints) == len(set(endpoints)) == 2 * 1 * 2 * 3  # widths x depth x norms x seeds
    assert [(e.width, e.norm, e.seed) for e in endpoints[:4]] == [
        (64.0, "none", 0),
        (64.0, "none", 1),
        (64.0, "none", 2),
        (64.0, "bn", 0),
    ]
    assert {e.depth for e in endpoints} == {6}  # None became the model's default depth
    trials = sweep.trials()
    assert len(trials) == 4 * 2 * 2  # arch combos x pairs x methods, the repeat dropped
    assert {t.a for t in trials} | {t.b for t in trials} == set(endpoints)
    assert all(t.sweep == "quick.v1" and t.alphas == sweep.alpha_grid() for t in trials)


def test_models_without_depth_keep_none() -> None:
    sweep = replace(GOOD, archs=(ArchGrid("resnet18", widths=(0.25,), norms=("bn",)),))
    assert {e.depth for e in sweep.endpoints()} == {None}
    validate_sweep(sweep)


@pytest.mark.parametrize(
    "alphas, grid",
    [
        (11, tuple(i / 10 for i in range(11))),
        (3, (0.0, 0.5, 1.0)),
        (4, (0.0, 0.333333, 0.5, 0.666667, 1.0)),  # an even count gains the midpoint
        ((1, 0.25, 0.0), (0.0, 0.25, 0.5, 1.0)),  # sorted, midpoint added
        ((0.0, 0.5, 0.5, 1.0), (0.0, 0.5, 1.0)),
    ],
)
def test_alpha_grid(alphas, grid) -> None:
    assert replace(GOOD, alphas=alphas).alpha_grid() == grid


def test_model_kwargs_build_the_model() -> None:
    for arch in (MLP, ArchGrid("resnet20", (2,), norms=("bn",)), ArchGrid("vgg", (0.25,))):
        endpoint = replace(GOOD, archs=(arch,)).endpoints()[0]
        kwargs = endpoint.model_kwargs()
        assert kwargs["in_shape"] == (1, 8, 8) and kwargs["num_classes"] == 10
        net = build_model(endpoint.model, **kwargs)
        assert net.config["norm"] == endpoint.norm
    assert GOOD.endpoints()[0].model_kwargs()["width"] == 64  # int where the model wants one


# ------------------------------------------------------------------------------------- keys


def test_endpoint_key_is_the_store_key_and_ignores_int_vs_float_width() -> None:
    e = EndpointConfig("mlp", "digits", 128, 6, "none", 0, 30)
    assert e.width == 128.0 and isinstance(e.width, float)
    # The store key of the config; the optimizer (added later) counts only when not the
    # default, so every endpoint keyed before it keeps its key.
    fields = {k: v for k, v in asdict(e).items() if k != "optimizer"}
    assert (
        e.key()
        == CheckpointStore.endpoint_key(fields)
        == CheckpointStore.endpoint_key(e.key_fields())
    )
    assert replace(e, optimizer="adam").key() != e.key()
    assert e.key() == EndpointConfig("mlp", "digits", 128.0, 6, "none", 0, 30).key()
    assert e.key() != replace(e, seed=1).key() != replace(e, epochs=31).key()
    assert e.params()["endpoint_key"] == e.key()


def test_trial_key_is_stable_and_sensitive_to_every_field(monkeypatch) -> None:
    trial = GOOD.trials()[0]
    assert trial.key() == Sweep.from_dict(GOOD.to_dict()).trials()[0].key()
    assert len(trial.key()) >= 16 and int(trial.key(), 16) >= 0
    changed = [
        replace(trial, sweep="other"),
        replace(trial, method="weight"),
        replace(trial, variants=("full",)),
        replace(trial, alphas=(0.0, 0.5, 1.0)),
        replace(trial, batch_size=250),
        replace(trial, b=replace(trial.b, seed=9)),
        replace(trial, a=replace(trial.a, epochs=4)),
    ]
    keys = {t.key() for t in changed}
    assert len(keys) == len(changed) and trial.key() not in keys
    before = trial.key()
    monkeypatch.setattr(store_mod, "CODE_VERSION", "999")
    assert trial.key() != before


def test_trial_params_are_flat_and_name_the_endpoints() -> None:
    trial = GOOD.trials()[0]
    params = trial.params()
    for col in (
        "model",
        "width",
        "depth",
        "norm",
        "dataset",
        "method",
        "seed_a",
        "seed_b",
        "endpoint_a",
        "endpoint_b",
        "trial_key",
        "sweep",
    ):
        assert col in params, col
    assert params["endpoint_a"] == trial.a.key() and params["endpoint_b"] == trial.b.key()
    assert params["trial_key"] == trial.key()
    assert all(v is None or isinstance(v, (str, int, float)) for v in params.values())
    assert trial.run_name() == "mlp-w64-d6-none-s0s1-activation"


# ------------------------------------------------------------------------------- from_dict


def test_from_dict_roundtrips_through_json() -> None:
    text = json.dumps(GOOD.to_dict())
    assert Sweep.from_dict(json.loads(text)) == GOOD
    yamlish = {
        "name": "s",
        "dataset": "digits",
        "archs": [{"model": "mlp", "widths": 32}],
        "alphas": [0, 0.5, 1],
        "pairs": [[0, 1]],
    }
    sweep = Sweep.from_dict(yamlish)
    assert sweep.archs[0].widths == (32,) and sweep.pairs == ((0, 1),)
    assert sweep.alphas == (0, 0.5, 1)
    validate_sweep(sweep)


def test_from_dict_names_unknown_and_missing_keys_together() -> None:
    with pytest.raises(SweepConfigError) as err:
        Sweep.from_dict(
            {
                "name": "x",
                "seed": 3,
                "archs": [{"model": "mlp", "width": 8}, 7],
                "seeds": [0, 1],
                "pairs": [[0, 1]],
            }
        )
    problems = err.value.problems
    assert "seed: unknown key (did you mean 'seeds'?)" in problems
    assert "dataset: missing (required)" in problems
    assert "archs[0].width: unknown key (did you mean 'widths'?)" in problems
    assert "archs[0]: missing widths (required)" in problems
    assert any(p.startswith("archs[1]: expected a mapping") for p in problems)
    assert any(p.startswith("seeds, pairs:") for p in problems)
    assert str(err.value).startswith("invalid sweep 'x' (6 problems):")


# ------------------------------------------------------------------------ validation catalogue


def test_unknown_model_lists_the_choices() -> None:
    sweep = replace(GOOD, archs=(ArchGrid("resnet34", (1,)),))
    _one_problem(sweep, "archs[0].model", "'resnet34'", "mlp, vgg, resnet20, resnet18, resnet50")


@pytest.mark.parametrize(
    "model, width, needle",
    [
        ("resnet20", 0, "int multiplier >= 1"),
        ("resnet20", 2.5, "its width is an integer"),
        ("mlp", 0, "width >= 1"),
        ("mlp", 12.5, "its width is an integer"),
        ("vgg", 0, "multiplier must be > 0"),
        ("resnet50", -0.5, "multiplier must be > 0"),
        ("vgg", "wide", "not a number"),
    ],
)
def test_width_not_allowed_for_the_model(model: str, width, needle: str) -> None:
    sweep = replace(GOOD, archs=(ArchGrid(model, (width,), norms=("bn",)),))
    _one_problem(sweep, "archs[0].widths", needle)


@pytest.mark.parametrize(
    "model, depth, needle",
    [
        ("vgg", 12, "one of 11, 13, 16, 19"),
        ("resnet20", 11, "6n+2"),
        ("resnet18", 18, "fixed by the name"),
        ("mlp", 0, ">= 1"),
        ("mlp", 2.5, "not an integer"),
    ],
)
def test_depth_not_allowed_for_the_model(model: str, depth, needle: str) -> None:
    sweep = replace(GOOD, archs=(ArchGrid(model, (1,), (depth,), ("bn",)),))
    _one_problem(sweep, "archs[0].depths", needle)


def test_the_model_constructor_decides_which_widths_it_accepts() -> None:
    """ResNet20 takes any integer multiplier (the old sweep rule capped it at 16: a drift)."""
    wide = replace(GOOD, archs=(ArchGrid("resnet20", (1, 17, 32), norms=("bn",)),))
    validate_sweep(wide)
    kwargs = wide.endpoints()[-1].model_kwargs()
    assert kwargs["width"] == 32 and build_model("resnet20", **kwargs).config["width"] == 32


def test_sweep_names_follow_the_results_tables_rule() -> None:
    """One name rule for sweeps, Parquet partitions and MLflow filters (they once differed)."""
    from repair_dist.location import check_name

    validate_sweep(replace(GOOD, name="v1+bn"))
    assert check_name("sweep", "v1+bn") == "v1+bn"


def test_norm_not_supported_by_the_model() -> None:
    sweep = replace(GOOD, archs=(ArchGrid("vgg", (0.25,), norms=("bn", "gn")),))
    _one_problem(sweep, "archs[0].norms", "'gn' is not supported by vgg", "bn, ln, none, psbn")


def test_a_net_that_cannot_run_on_the_dataset_inputs_is_reported(monkeypatch) -> None:
    # A conv net on flat (tabular) inputs fails in forward only: the meta-device pass sees it.
    flat = {"in_shape": (64,), "num_classes": 10}
    monkeypatch.setattr(validation_mod, "dataset_info", lambda name, root=None: flat)
    sweep = replace(GOOD, archs=(ArchGrid("vgg", (0.25,), norms=("bn",)), MLP))
    _one_problem(sweep, "archs[0]", "vgg(width=0.25, depth=11, norm=bn)", "(64,)")


def test_unknown_dataset() -> None:
    _one_problem(replace(GOOD, dataset="mnist-ish"), "dataset", "'mnist-ish'", "digits")


def test_fashion_mnist_without_the_debian_package(tmp_path: Path) -> None:
    sweep = replace(GOOD, dataset="fashion-mnist", data_root=str(tmp_path))
    _one_problem(sweep, "dataset", "not on this machine", "apt-get install dataset-fashion-mnist")
    if not FASHION_MNIST_ROOT.is_dir():
        _one_problem(replace(sweep, data_root=None), "dataset", str(FASHION_MNIST_ROOT))
    validate_sweep(sweep, check_data=False)  # a driver without the data can opt out
    for stem in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (tmp_path / f"{stem}.gz").touch()  # existence is all validation looks at
    validate_sweep(sweep)


def test_cifar10_and_imagenet_need_a_data_root(tmp_path: Path) -> None:
    cifar = replace(GOOD, dataset="cifar10", data_root=str(tmp_path / "nowhere"))
    _one_problem(cifar, "dataset", "cifar-10-batches-py")
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in ("data_batch_1", "test_batch"):
        (folder / name).touch()
    validate_sweep(replace(cifar, data_root=str(tmp_path / "cifar")))
    imagenet = replace(
        GOOD,
        dataset="imagenet",
        data_root=str(tmp_path / "nowhere"),
        archs=(ArchGrid("resnet18", (0.25,), norms=("bn",)),),
    )
    _one_problem(imagenet, "dataset", "ImageFolder")


def test_seed_pair_with_equal_seeds() -> None:
    _one_problem(replace(GOOD, pairs=((0, 1), (2, 2))), "pairs[1]", "seeds are equal")
    _one_problem(replace(GOOD, pairs=((0, 1), (0, 1))), "pairs", "listed twice")


@pytest.mark.parametrize("seeds", [(0,), (), (3, 3)])
def test_fewer_than_two_seeds(seeds) -> None:
    _one_problem(replace(GOOD, seeds=seeds), "seeds", "at least 2 different seeds")


def test_an_odd_seed_would_be_left_unpaired() -> None:
    _one_problem(replace(GOOD, seeds=(0, 1, 2)), "seeds", "seed 2 unpaired", "pairs")


def test_the_torch_free_vocabulary_is_the_librarys():
    # Validation reads repair_dist.variants (no torch); the library computes with these.
    import importlib

    from repair_dist import curves, train, variants
    from repair_dist.perm import activation, many
    from repair_dist.perm.matchers import MATCHING_METHODS
    from repair_dist.pipeline import METHODS

    prune = importlib.import_module("repair_dist.prune")  # rd.prune is the function

    assert variants.METHODS == METHODS == tuple(MATCHING_METHODS)
    assert activation.RESIDUAL_MODES is variants.RESIDUAL_MODES
    assert train.OPTIMIZERS is variants.OPTIMIZERS and set(train.DEFAULT_LR) == set(
        variants.OPTIMIZERS
    )
    assert curves.KINDS is variants.CURVE_KINDS and many.ALIGN_METHODS is variants.ALIGN_METHODS
    assert prune.PRUNE_KINDS is variants.PRUNE_KINDS
    assert prune.STRUCTURED_KINDS is variants.STRUCTURED_KINDS
    assert prune.PRUNE_REPAIR_VARIANTS is variants.PRUNE_REPAIR_VARIANTS


def test_unknown_method() -> None:
    _one_problem(replace(GOOD, methods=("activation", "sinkhorn")), "methods", "'sinkhorn'", "ste")


def test_ste_is_a_method_a_sweep_asks_for_explicitly() -> None:
    assert "ste" not in GOOD.methods  # the default runs the two cheap pair matchers
    validate_sweep(replace(GOOD, methods=("activation", "ste")))


def test_unknown_variant_and_variants_that_are_always_there() -> None:
    _one_problem(replace(GOOD, variants=("full", "fancy")), "variants", "'fancy'", "closed_form")
    _one_problem(replace(GOOD, variants=("naive", "full")), "variants", "need not be listed")
    validate_sweep(replace(GOOD, variants=()))  # naive and aligned only


@pytest.mark.parametrize(
    "alphas, needle",
    [
        ((0.0, 0.5, 1.2), "1.2 outside [0, 1]"),
        ((-0.1, 0.5, 1.0), "-0.1 outside [0, 1]"),
        ((0.0, 1.0), "at least 3"),
        (2, "at least 3"),
        ("many", "a count or a list"),
    ],
)
def test_alphas_outside_the_unit_interval_or_too_few(alphas, needle: str) -> None:
    _one_problem(replace(GOOD, alphas=alphas), "alphas", needle)


@pytest.mark.parametrize("epochs", [0, -3, 1.5])
def test_epochs_below_one(epochs) -> None:
    _one_problem(replace(GOOD, epochs=epochs), "epochs", "integer >= 1")


def test_gpus_requested_on_a_cluster_without_gpus() -> None:
    sweep = replace(GOOD, gpus_per_worker=1)
    _one_problem(sweep, "gpus_per_worker", "no GPU", cluster_resources={"CPU": 8.0})
    validate_sweep(sweep)  # without cluster facts, nothing to compare with
    validate_sweep(sweep, cluster_resources={"CPU": 8.0, "GPU": 1.0})
    two = replace(sweep, workers_per_trial=2)
    _one_problem(two, "gpus_per_worker", "2 GPUs per trial", cluster_resources={"CPU": 8, "GPU": 1})


def test_more_cpus_per_trial_than_the_cluster_has() -> None:
    sweep = replace(GOOD, workers_per_trial=2, cpus_per_worker=1.5)
    cluster = {"CPU": 2.0}
    _one_problem(sweep, "workers_per_trial", "3 CPUs", "has 2", cluster_resources=cluster)
    validate_sweep(sweep, cluster_resources={"CPU": 4.0})


@pytest.mark.parametrize(
    "name, needle",
    [
        ("", "non-empty"),
        ("my sweep", "' '"),
        ("a/b", "'/'"),
        (".hidden", "leading"),
        ("s:1", "':'"),
    ],
)
def test_empty_or_unsafe_names(name: str, needle: str) -> None:
    _one_problem(replace(GOOD, name=name), "name", needle)


def test_all_problems_come_in_one_error_one_line_each() -> None:
    bad = Sweep(
        name="bad name",
        dataset="nope",
        archs=(ArchGrid("resnet20", (0,), (11,), ("gn",)), ArchGrid("foo", (1,))),
        seeds=(4,),
        methods=("magic",),
        variants=("bogus",),
        alphas=(0.0, 2.0, 1.0),
        epochs=0,
        gpus_per_worker=1,
        workers_per_trial=3,
    )
    problems = _problems(bad, cluster_resources={"CPU": 2.0})
    fields = [p.split(":", 1)[0] for p in problems]
    assert fields == [
        "name",
        "dataset",
        "archs[0].widths",
        "archs[0].depths",
        "archs[0].norms",
        "archs[1].model",
        "seeds",
        "epochs",
        "methods",
        "variants",
        "alphas",
        "gpus_per_worker",
        "workers_per_trial",
    ]


def test_validation_needs_no_weights(monkeypatch) -> None:
    """Big nets validate as fast as small ones: nothing is allocated (meta device)."""
    import torch

    devices: list[str] = []
    real_init = torch.nn.init.kaiming_normal_

    def spy(tensor, *args, **kwargs):
        devices.append(tensor.device.type)
        return real_init(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "kaiming_normal_", spy)
    wide = ArchGrid("resnet50", (4,), norms=("bn",))  # about 370M parameters if real
    validate_sweep(replace(GOOD, dataset="synthetic", archs=(wide,)))
    assert devices and set(devices) == {"meta"}


def test_trial_spec_normalises_sequences() -> None:
    e = GOOD.endpoints()[0]
    spec = TrialSpec("s", e, e, "weight", ["full"], [0, 0.5, 1])  # type: ignore[arg-type]
    assert spec.variants == ("full",) and spec.alphas == (0.0, 0.5, 1.0)
    assert hash(spec) == hash(TrialSpec("s", e, e, "weight", ("full",), (0.0, 0.5, 1.0)))


def test_amp_must_be_a_boolean_and_is_part_of_the_trial_key():

    base = dict(name="amp", dataset="digits", archs=(ArchGrid("mlp", widths=(8,), depths=(2,)),))
    with pytest.raises(SweepConfigError, match="amp: must be true or false"):
        validate_sweep(Sweep(**base, amp="yes"))
    plain, mixed = Sweep(**base).trials()[0], Sweep(**base, amp=True).trials()[0]
    assert mixed.amp and plain.key() != mixed.key() and mixed.params()["amp"] is True


def test_a_data_parallel_curve_must_fit_beside_its_unit() -> None:
    """A curve unit keeps its CPUs while Ray Train fits the curve on train_workers more."""
    from repair_dist.sweep.config import CurveConfig

    sweep = replace(GOOD, curve=CurveConfig(epochs=1), train_workers=2, cpus_per_worker=1.0)
    message = _one_problem(sweep, "curve", "3 CPUs in all", cluster_resources={"CPU": 2.6})
    assert "never start" in message
    validate_sweep(sweep, cluster_resources={"CPU": 3})
