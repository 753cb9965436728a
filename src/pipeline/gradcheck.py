"""python -m pipeline.gradcheck [names] [modules.layers.X=path ...]: checks the modules conf/modules/scratch.yaml
names (or yours, given as overrides) against torch.nn, prints each one's worst error, and exits 1 if any fails."""
import argparse
import sys
from pathlib import Path

from pipeline.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf"


def modules_config(overrides: list[str]):
    """conf/modules/scratch.yaml with `key=value` overrides (modules.layers.Linear=my_lab.Linear)."""
    from omegaconf import OmegaConf

    config = OmegaConf.create({"modules": OmegaConf.load(CONF / "modules" / "scratch.yaml")})
    for override in overrides:
        key, _, value = override.partition("=")
        if not key.startswith(("modules.layers.", "modules.losses.")):
            raise ConfigError(f"{override!r}: overrides name a module's implementation, "
                              "modules.layers.<torch.nn class>=<class path> or modules.losses.<loss>=<function path>")
        OmegaConf.update(config, key, value or None, force_add=True)
    return OmegaConf.to_container(config.modules)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.gradcheck", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("items", nargs="*", metavar="name | override",
                        help="modules to check by their conf/modules/scratch.yaml name (Linear, Conv2d, LSTM, "
                             "cross_entropy, ...; any case), all if none; overrides key=value swap in your own")
    args = parser.parse_args(argv)
    names = {item.lower() for item in args.items if "=" not in item}
    try:
        modules = modules_config([item for item in args.items if "=" in item])
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import torch

    from pipeline.scratch.cases import CASES
    from pipeline.scratch.check import TOLERANCE, check

    known = {case.key.lower() for case in CASES}
    if names - known:
        print(f"error: no module called {', '.join(sorted(names - known))}; known: "
              f"{', '.join(sorted({case.key for case in CASES}))}", file=sys.stderr)
        return 2
    torch.set_num_threads(min(2, torch.get_num_threads()))
    print(f"{'module':<16}{'case':<62}{'gradcheck':<11}{'float64':<11}{'float32':<11}verdict")
    failed = 0
    for case in CASES:
        if names and case.key.lower() not in names:
            continue
        try:
            result = check(case, modules)
        except ConfigError as error:
            print(f"{case.key:<16}{case.label:<62}error: {error}")
            failed += 1
            continue
        if result is None:
            print(f"{case.key:<16}{case.label:<62}(torch's own: not replaced)")
            continue
        errors = [f"{result.errors[dtype][0]:<11.1e}" for dtype in TOLERANCE]
        verdict = "ok" if result.passed else "FAIL: " + ", ".join(
            [] if result.gradcheck else ["gradcheck"]) + "; ".join(
            f" {dtype} worst at {where}" for dtype, (error, where) in result.errors.items()
            if error > TOLERANCE[dtype])
        print(f"{case.key:<16}{case.label:<62}{'pass' if result.gradcheck else 'FAIL':<11}{''.join(errors)}{verdict}")
        failed += not result.passed
    print(f"tolerances: float64 {TOLERANCE[torch.float64]:.0e}, float32 {TOLERANCE[torch.float32]:.0e} "
          "(max |mine - torch| / max(1, max |torch|) over outputs, buffers and every gradient)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
