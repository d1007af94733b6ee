"""`repair-dist check-cluster`: the shipped cluster configs pass Ray's own rules and ours, offline,
and each typical mistake is caught with a message that names the file (and line) and the fix."""

from __future__ import annotations

import copy
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from repair_dist.distributed.cluster_check import (
    check_cluster,
    format_report,
    has_errors,
    is_warning,
)

ROOT = Path(__file__).resolve().parents[1]
AWS = ROOT / "cluster.yaml"
ONPREM = ROOT / "cluster-onprem.yaml"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to reach a cloud API (DNS or a socket connect) fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"check_cluster tried to use the network: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def errors(problems: list[str]) -> list[str]:
    return [p for p in problems if not is_warning(p)]


def warnings(problems: list[str]) -> list[str]:
    return [p for p in problems if is_warning(p)]


def aws_config() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(AWS.read_text()))


def write(tmp_path: Path, config: dict[str, Any] | str, name: str = "cluster.yaml") -> Path:
    path = tmp_path / name
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- shipped files


@pytest.mark.parametrize("requires_gpu", [False, True])
def test_shipped_aws_config_is_valid_and_only_asks_for_placeholders(requires_gpu: bool) -> None:
    problems = check_cluster(AWS, requires_gpu=requires_gpu)
    assert errors(problems) == []
    # The only advice left is "fill in your AMI / instance profiles / bucket".
    assert warnings(problems), "the template's placeholders should be listed"
    assert all("placeholder" in w for w in warnings(problems)), warnings(problems)
    assert any("YOUR-BUCKET" in w for w in problems)


@pytest.mark.parametrize("requires_gpu", [False, True])
def test_shipped_onprem_config_is_valid(requires_gpu: bool) -> None:
    problems = check_cluster(ONPREM, requires_gpu=requires_gpu)
    assert errors(problems) == []
    intended = [w for w in warnings(problems) if "placeholder" not in w]
    if requires_gpu:  # on-prem GPUs are detected at `ray start`: said, not failed
        assert len(intended) == 1 and "cannot be verified offline" in intended[0]
    else:
        assert intended == []


def test_validation_is_offline_and_never_loads_a_cloud_provider() -> None:
    check_cluster(AWS, requires_gpu=True)
    loaded = [m for m in sys.modules if m.startswith(("boto3", "botocore"))]
    loaded += [m for m in sys.modules if m.startswith("ray.autoscaler._private.aws.")]
    assert loaded == []


def test_shipped_aws_config_keeps_trials_off_the_head_and_the_dashboard_private() -> None:
    config = aws_config()
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start


# ----------------------------------------------------------------------------- broken variants


def test_missing_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert check_cluster(path) == [f"{path}: no such file"]


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    text = AWS.read_text().replace("max_workers: 10", "max_workers: [10", 1)
    path = write(tmp_path, text)
    (problem,) = check_cluster(path)
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "max_workers: [10" in s)
    assert problem.startswith(f"{path}:")
    assert "invalid YAML" in problem
    # The parser notices at the unclosed flow sequence's line or just after it.
    reported = int(problem.split(":")[1])
    assert line <= reported <= line + 3, problem


def test_empty_file_is_rejected(tmp_path: Path) -> None:
    (problem,) = check_cluster(write(tmp_path, ""))
    assert "empty" in problem


def test_unknown_top_level_key_is_a_schema_error_at_its_line(tmp_path: Path) -> None:
    config = aws_config()
    config["max_worker"] = 3  # typo of max_workers
    path = write(tmp_path, config)
    (problem,) = errors(check_cluster(path))
    line = next(i for i, s in enumerate(path.read_text().splitlines(), 1) if "max_worker:" in s)
    assert problem.startswith(f"{path}:{line}: schema:")
    assert "'max_worker' was unexpected" in problem


def test_wrong_type_deep_inside_is_a_schema_error_with_its_path(tmp_path: Path) -> None:
    config = aws_config()
    config["available_node_types"]["gpu_1x"]["resources"]["GPU"] = "one"
    (problem,) = errors(check_cluster(write(tmp_path, config)))
    assert "is not of type 'integer'" in problem
    assert "available_node_types.gpu_1x.resources.GPU" in problem


def test_rays_cross_field_rules_apply(tmp_path: Path) -> None:
    config = aws_config()
    config["head_node_type"] = "headd"
    (problem,) = errors(check_cluster(write(tmp_path, config)))
    assert "validate_config" in problem and "head_node_type" in problem


def test_onprem_with_node_types_is_rejected_by_ray(tmp_path: Path) -> None:
    config = yaml.safe_load(ONPREM.read_text())
    config["available_node_types"] = {"x": {"resources": {}, "node_config": {}}}
    config["head_node_type"] = "x"
    (problem,) = errors(check_cluster(write(tmp_path, config)))
    assert "prepare_config" in problem and "not supported for on-premise" in problem


def test_gpu_sweep_on_cpu_only_workers_is_refused(tmp_path: Path) -> None:
    config = aws_config()
    types = config["available_node_types"]
    del types["gpu_8x"]
    types["gpu_1x"]["resources"] = {"CPU": 8}
    types["gpu_1x"]["node_config"]["InstanceType"] = "m5.2xlarge"
    path = write(tmp_path, config)
    (problem,) = errors(check_cluster(path, requires_gpu=True))
    assert "needs GPUs" in problem and "m5.2xlarge" in problem
    assert errors(check_cluster(path, requires_gpu=False)) == []


def test_gpu_types_that_never_start_do_not_count(tmp_path: Path) -> None:
    config = aws_config()
    for name in ("gpu_1x", "gpu_8x"):
        config["available_node_types"][name]["max_workers"] = 0
    (problem,) = errors(check_cluster(write(tmp_path, config), requires_gpu=True))
    assert "max_workers 0" in problem


def test_gpu_instance_family_counts_without_explicit_resources(tmp_path: Path) -> None:
    config = aws_config()
    del config["available_node_types"]["gpu_8x"]
    config["available_node_types"]["gpu_1x"]["resources"] = {}  # `ray up` fills from EC2
    assert errors(check_cluster(write(tmp_path, config), requires_gpu=True)) == []


def test_multi_node_without_store_is_refused(tmp_path: Path) -> None:
    config = aws_config()
    config["setup_commands"] = [c for c in config["setup_commands"] if "REPAIR_DIST_STORE" not in c]
    (problem,) = errors(check_cluster(write(tmp_path, config)))
    assert "REPAIR_DIST_STORE" in problem and "multi-node" in problem
    config["max_workers"] = 0  # a single-node cluster keeps its store on its own disk
    for node_type in config["available_node_types"].values():
        node_type["max_workers"] = 0
    assert errors(check_cluster(write(tmp_path, config, "single.yaml"))) == []


def test_relative_store_path_is_refused(tmp_path: Path) -> None:
    config = aws_config()
    config["setup_commands"].append("echo 'export REPAIR_DIST_STORE=results' >> ~/.bashrc")
    (problem,) = errors(check_cluster(write(tmp_path, config)))
    assert "relative path" in problem


def test_setup_must_install_the_project(tmp_path: Path) -> None:
    config = aws_config()
    config["setup_commands"] = [c for c in config["setup_commands"] if "pip install -e" not in c]
    (problem,) = errors(check_cluster(write(tmp_path, config)))
    assert "installs repair-dist" in problem


def test_head_that_takes_trials_is_only_a_warning(tmp_path: Path) -> None:
    config = aws_config()
    config["available_node_types"]["head"]["resources"] = {}
    problems = check_cluster(write(tmp_path, config))
    assert errors(problems) == []
    (warning,) = [w for w in warnings(problems) if "CPU: 0" in w]
    assert ": warning: head node type `head`" in warning


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (
            lambda c: c["provider"].update(
                aws_credentials={"aws_secret_access_key": "s3cr3tVALUE", "aws_access_key_id": ""}
            ),
            "provider.aws_credentials.aws_secret_access_key",
        ),
        (
            lambda c: c["setup_commands"].append("export AWS_SECRET_ACCESS_KEY=s3cr3tVALUE"),
            "assigns AWS_SECRET_ACCESS_KEY literally",
        ),
        (lambda c: c["auth"].update(password="s3cr3tVALUE"), "`auth.password` holds a credential"),
        (
            lambda c: c["setup_commands"].append(
                "pip install git+https://me:s3cr3tVALUE@example.com/x.git"
            ),
            "password inside a URL",
        ),
    ],
)
def test_secrets_are_refused_without_echoing_them(
    tmp_path: Path, mutate: Any, expected: str
) -> None:
    config = aws_config()
    mutate(config)
    path = write(tmp_path, config)
    problems = errors(check_cluster(path))
    assert problems and all("secret" in p for p in problems), problems
    assert any(expected in p for p in problems), problems
    assert not any("s3cr3tVALUE" in p for p in problems)
    assert all(p.startswith(f"{path}:") for p in problems)


def test_aws_key_id_even_in_a_comment_is_refused(tmp_path: Path) -> None:
    text = AWS.read_text() + "# old key: AKIA" + "ABCDEFGHIJKLMNOP\n"
    path = write(tmp_path, text)
    (problem,) = errors(check_cluster(path))
    assert problem.startswith(f"{path}:{len(text.splitlines())}:")
    assert "AWS access key id" in problem


def test_environment_references_are_not_secrets(tmp_path: Path) -> None:
    config = aws_config()
    config["setup_commands"].append("export HF_TOKEN=$HF_TOKEN")
    assert errors(check_cluster(write(tmp_path, config))) == []


# ----------------------------------------------------------------------------- report


def test_report_gives_a_verdict_and_errors_decide_the_exit_code(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    assert "OK" in format_report(path, []) and "offline" in format_report(path, [])
    warn = f"{path}:3: warning: placeholder `YOUR-X`"
    err = f"{path}:4: schema: bad"
    assert is_warning(warn) and not is_warning(err)
    assert not has_errors([warn]) and has_errors([warn, err])
    report = format_report(path, [warn, err])
    assert report.splitlines()[:2] == [warn, err]
    assert "1 error(s), 1 warning(s)" in report
    assert format_report(path, [warn]).endswith("OK with 1 warning(s)")
