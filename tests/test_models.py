"""Models and their permutation specs: a spec must be correct (permuting preserves the function)
and complete (every tensor that must move is in it), probes and repair points must sit where
matching and REPAIR expect them, and torchvision checkpoints must load unchanged."""

from __future__ import annotations

import functools
import json

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from repair_dist.models import MODEL_NAMES, build_model
from repair_dist.models.vgg import VGG
from repair_dist.perm.apply import apply_permutation, random_permutation
from repair_dist.perm.spec import PermutationSpec, permutation_spec

# Small enough that the whole file runs in seconds on 2 CPU cores.
CASES: dict[str, dict] = {
    "mlp": dict(name="mlp", depth=3, width=16, in_shape=(1, 8, 8)),
    "vgg11": dict(name="vgg", depth=11, width=0.125, in_shape=(3, 16, 16)),
    "resnet20": dict(name="resnet20", width=1, in_shape=(3, 16, 16)),
    "resnet18": dict(name="resnet18", width=0.25, in_shape=(3, 32, 32), num_classes=10),
    "resnet50": dict(name="resnet50", width=0.25, in_shape=(3, 32, 32), num_classes=10),
}
NORMS = ("bn", "ln", "none")
PARAMS = [(c, n) for c in CASES for n in NORMS] + [("vgg11", "psbn"), ("resnet20", "psbn")]
IDS = [f"{c}-{n}" for c, n in PARAMS]


@torch.no_grad()
def _randomize(net: nn.Module, seed: int) -> None:
    """Non-trivial norm params, BN statistics and biases, so a missing permutation shows."""
    g = torch.Generator().manual_seed(seed)

    def rand(t: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(t.shape, generator=g)

    for m in net.modules():
        if isinstance(m, _BatchNorm):
            m.running_mean.copy_(rand(m.running_mean, -0.3, 0.3))
            m.running_var.copy_(rand(m.running_var, 0.5, 2.0))
        if isinstance(m, (_BatchNorm, nn.LayerNorm)):
            m.weight.copy_(rand(m.weight, 0.5, 1.5))
            m.bias.copy_(rand(m.bias, -0.3, 0.3))
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            m.bias.copy_(rand(m.bias, -0.1, 0.1))


@functools.cache
def _net(case: str, norm: str) -> nn.Module:
    """A randomised eval-mode net (cached: tests must not modify it)."""
    cfg = dict(CASES[case])
    torch.manual_seed(0)
    net = build_model(cfg.pop("name"), norm=norm, **cfg)
    _randomize(net, seed=1)
    return net.eval()


def _input(case: str, n: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    return torch.randn((n, *CASES[case]["in_shape"]), generator=g)


def _head(net: nn.Module) -> str:
    return [name for name, m in net.named_modules() if isinstance(m, nn.Linear)][-1]


def _assert_same_function(y: torch.Tensor, y_ref: torch.Tensor) -> None:
    # atol 1e-5 on the output scale: deep un-normalised nets have outputs of 10-100, where
    # float32 summation-order noise alone exceeds an absolute 1e-5.
    scale = max(1.0, y_ref.abs().max().item())
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-5 * scale)


def _differs(y: torch.Tensor, y_ref: torch.Tensor) -> bool:
    scale = max(1.0, y_ref.abs().max().item())
    return (y - y_ref).abs().max().item() > 1e-4 * scale


def _run_probes(net: nn.Module, spec: PermutationSpec, x: torch.Tensor):
    """Activations at every probe, and the order and number of times each probe module fired."""
    modules = dict(net.named_modules())
    acts: dict = {}
    fired: list[str] = []
    handles = []
    for probes in spec.match_probes.values():
        for p in probes:

            def hook(_m, _i, out, p=p):
                fired.append(p.module)
                acts[p] = torch.relu(out) if p.relu else out.clone()

            handles.append(modules[p.module].register_forward_hook(hook))
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    return acts, fired


@pytest.mark.parametrize(("case", "norm"), PARAMS, ids=IDS)
def test_permutation_preserves_function_and_probes(case: str, norm: str) -> None:
    net = _net(case, norm)
    spec = permutation_spec(net)
    spec.validate(net)
    perm = random_permutation(spec.group_sizes(net), seed=3)
    permuted = apply_permutation(net, perm, spec)
    x = _input(case)
    with torch.no_grad():
        y, y_perm = net(x), permuted(x)
    _assert_same_function(y_perm, y)

    # The permutation really moved things: every tensor with a permuted axis changed.
    before, after = net.state_dict(), permuted.state_dict()
    moved = [k for k, axes in spec.axes.items() if any(g is not None for g in axes)]
    assert moved
    for k in moved:
        assert not torch.equal(before[k], after[k]), f"{k} did not move"

    # Probes: post-ReLU, each module fires once per forward, a group's probes come in forward
    # order, and each probe's channels are exactly that group's (they move with its perm).
    acts, fired = _run_probes(net, spec, x)
    acts_perm, _ = _run_probes(permuted, spec, x)
    assert len(fired) == len(set(fired)), "a probe module fires more than once per forward"
    assert set(spec.match_probes) == set(spec.groups), "every group needs a probe"
    for g, probes in spec.match_probes.items():
        order = [fired.index(p.module) for p in probes]
        assert order == sorted(order), f"probes of {g} not in forward order"
        for p in probes:
            a, b = acts[p], acts_perm[p]
            assert a.min() >= 0, f"probe {p} is not post-ReLU"
            _assert_same_function(b, a.index_select(1, perm[g]))


@pytest.mark.parametrize(("case", "norm"), PARAMS, ids=IDS)
def test_spec_is_complete(case: str, norm: str) -> None:
    """Every tensor is in the spec, and leaving any one permuted tensor out breaks the net."""
    net = _net(case, norm)
    spec = permutation_spec(net)
    head = _head(net)
    state = net.state_dict()
    expected = {k for k in state if not k.endswith("num_batches_tracked") and k != f"{head}.bias"}
    assert expected - set(spec.axes) == set(), "tensors missing from the spec"

    # Leave each tensor unpermuted in turn (one tensor swapped back per check: cheap).
    perm = random_permutation(spec.group_sizes(net), seed=4)
    x = _input(case, n=1)
    with torch.no_grad():
        y = net(x)
    keys = [k for k, axes in spec.axes.items() if any(g is not None for g in axes)]
    if case == "resnet50":  # one of each kind of block and tensor is enough, and much faster
        prefixes = ("conv1.", "bn1.", "layer1.0.", "layer2.0.", "layer4.2.", "fc.")
        keys = [k for k in keys if k.startswith(prefixes)]
    permuted = apply_permutation(net, perm, spec)
    live = permuted.state_dict()  # shares storage with the module's tensors
    for k in keys:
        moved = live[k].clone()
        with torch.no_grad():
            live[k].copy_(state[k])
            assert _differs(permuted(x), y), f"dropping {k} from the spec changes nothing"
            live[k].copy_(moved)


@pytest.mark.parametrize(("case", "norm"), PARAMS, ids=IDS)
def test_repair_points(case: str, norm: str) -> None:
    net = _net(case, norm)
    spec = permutation_spec(net)
    head = _head(net)
    layers = {
        name
        for name, m in net.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and name != head
    }
    names = [rp.module for rp in spec.repair_points]
    assert len(names) == len(set(names))
    assert set(names) == layers

    modules = dict(net.named_modules())
    for rp in spec.repair_points:
        assert spec.axes[f"{rp.module}.weight"][0] == rp.group
        if norm in ("ln", "none"):
            assert rp.norm is None
            assert modules[rp.module].bias is not None, "REPAIR needs a bias to fold into"
        else:
            assert isinstance(modules[rp.norm], _BatchNorm)

    if norm in ("bn", "psbn"):
        # The named BatchNorm consumes exactly the layer's output tensor.
        outs: dict[str, torch.Tensor] = {}
        ins: dict[str, torch.Tensor] = {}
        handles = []
        for rp in spec.repair_points:
            handles.append(
                modules[rp.module].register_forward_hook(
                    lambda _m, _i, o, n=rp.module: outs.__setitem__(n, o)
                )
            )
            handles.append(
                modules[rp.norm].register_forward_pre_hook(
                    lambda _m, i, n=rp.norm: ins.__setitem__(n, i[0])
                )
            )
        with torch.no_grad():
            net(_input(case))
        for h in handles:
            h.remove()
        for rp in spec.repair_points:
            assert outs[rp.module] is ins[rp.norm], f"{rp.norm} does not consume {rp.module}"


def test_residual_groups() -> None:
    """Stream groups: one per stage; the stem joins layer1 unless layer1 has a downsample."""
    r18 = permutation_spec(_net("resnet18", "bn"))
    assert [p.module for p in r18.match_probes["P_layer1"]] == ["relu", "layer1.0", "layer1.1"]
    assert r18.axes["layer2.0.downsample.0.weight"] == ("P_layer2", "P_layer1", None, None)
    assert r18.match_probes["P_layer1.0.conv1"][0].relu
    assert sum(g.startswith("P_layer") and "." not in g for g in r18.groups) == 4

    r50 = permutation_spec(_net("resnet50", "none"))
    assert [p.module for p in r50.match_probes["P_stem"]] == ["relu"]
    assert r50.axes["layer1.0.downsample.0.weight"] == ("P_layer1", "P_stem", None, None)
    assert len(r50.match_probes["P_layer3"]) == 6
    assert r50.axes["layer1.0.conv3.weight"][:2] == ("P_layer1", "P_layer1.0.conv2")

    r20 = permutation_spec(_net("resnet20", "ln"))
    assert r20.match_probes["P_layer1"][0].module == "stem.relu"
    assert len(r20.match_probes["P_layer1"]) == 4
    assert r20.axes["layer3.0.shortcut.conv.weight"][:2] == ("P_layer3", "P_layer2")


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_checkpoint_loads(name: str) -> None:
    tv = getattr(torchvision.models, name)().eval()
    ours = build_model(name).eval()
    assert list(ours.state_dict()) == list(tv.state_dict())
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _assert_same_function(ours(x), tv(x))
    permutation_spec(ours)  # the spec is valid on torchvision's key names


@pytest.mark.parametrize("depth", [11, 13, 16, 19])
def test_vgg_small_inputs(depth: int) -> None:
    """Five 2x2 pools on an 8x8 (or odd-sized) image must not fail."""
    for shape in [(1, 8, 8), (3, 5, 7)]:
        net = VGG(depth=depth, width=0.0625, norm="none", in_shape=shape).eval()
        with torch.no_grad():
            assert net(torch.randn(2, *shape)).shape == (2, 10)
    n_convs = sum(isinstance(m, nn.Conv2d) for m in net.modules())
    assert n_convs == depth - 3


def test_widths_and_depths() -> None:
    vgg = build_model("vgg", width=0.5)
    assert [b.conv.out_channels for b in vgg.blocks][::2] == [32, 128, 256, 256]
    r20 = build_model("resnet20", width=2, depth=32)
    assert [s[0].conv1.out_channels for s in r20.stages] == [32, 64, 128]
    assert [len(s) for s in r20.stages] == [5, 5, 5]
    r50 = build_model("resnet50", width=0.5, num_classes=10)
    assert r50.fc.in_features == 1024 and r50.layer1[0].conv1.out_channels == 32
    with pytest.raises(ValueError, match="6n\\+2"):
        build_model("resnet20", depth=21)
    with pytest.raises(ValueError, match="11, 13, 16, 19"):
        build_model("vgg", depth=12)
    with pytest.raises(ValueError, match="norm"):
        build_model("resnet18", norm="gn")


def test_conv_biases_follow_norm() -> None:
    for norm, has_bias in [("bn", False), ("psbn", False), ("ln", True), ("none", True)]:
        for name in ["vgg", "resnet20", "resnet18"]:
            net = build_model(name, norm=norm, width=1 if name == "resnet20" else 0.125)
            convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
            assert all((m.bias is not None) == has_bias for m in convs), (name, norm)


def test_the_torch_free_catalog_is_the_constructors_own_signatures() -> None:
    # Sweep planning reads the catalog (no torch); building reads the constructors. Any edit
    # to a constructor's arguments, defaults or annotations without the catalog fails here.
    import inspect

    from repair_dist.models import catalog, registry

    assert catalog.MODEL_NAMES == MODEL_NAMES == tuple(registry._REGISTRY)
    for name in MODEL_NAMES:
        real = inspect.signature(registry._REGISTRY[name]).parameters
        assert catalog.model_parameters(name) == real, name
        assert list(catalog.model_parameters(name)) == list(real), name  # order: positional use


def test_registry() -> None:
    assert set(MODEL_NAMES) == {"mlp", "vgg", "resnet20", "resnet18", "resnet50"}
    with pytest.raises(ValueError, match="mlp, vgg, resnet20, resnet18, resnet50"):
        build_model("resnet19")
    with pytest.raises(ValueError, match="resnet18 does not take depth=3"):
        build_model("resnet18", depth=3)
    with pytest.raises(ValueError, match="mlp does not take kernel"):
        build_model("mlp", kernel=3)
    for case in CASES:
        net = _net(case, "ln")
        cfg = json.loads(json.dumps(net.config))
        assert cfg == net.config and cfg["name"] == CASES[case]["name"]
        rebuilt = build_model(**cfg)
        assert rebuilt.config == net.config
        shapes = {k: v.shape for k, v in rebuilt.state_dict().items()}
        assert shapes == {k: v.shape for k, v in net.state_dict().items()}
