"""The quickstart sweep (same as `repair-dist quickstart`): deep MLPs and a BN VGG on digits."""

from repair_dist.cli import script_main
from repair_dist.sweep.presets import quickstart_sweep


def build_sweep(smoke: bool = False):
    return quickstart_sweep(smoke)


if __name__ == "__main__":
    raise SystemExit(script_main(build_sweep))
