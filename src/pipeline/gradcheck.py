"""python -m pipeline.gradcheck [names] [modules.layers.X=path ...]: checks the modules conf/modules/scratch.yaml
names (or yours, given as overrides) against torch.nn, and the scratch optimizers (conf/optimizer/scratch_*.yaml, or
yours: optimizer._target_=path) against torch.optim; prints each one's worst error and exits 1 if any fails."""
import argparse
import sys
from pathlib import Path

from pipeline.errors import ConfigError, first_line

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


def optimizer_rows(names: set[str], target: str | None):
    """(option, setting, errors per dtype) of each scratch optimizer option (or `target` in its place) against the
    torch.optim option it mirrors, over 100 steps from the same start."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from pipeline.scratch.check import TOLERANCE
    from pipeline.scratch.trajectory import trajectory_error

    for path in sorted((CONF / "optimizer").glob("scratch_*.yaml")):
        option, reference = path.stem, path.stem.removeprefix("scratch_")
        if names and not names & {option, reference}:
            continue
        for weight_decay in (0.0, 0.01):
            setting = f"100 steps vs torch's {reference}, weight decay {weight_decay}"
            try:
                built = {}
                for name in (option, reference):
                    config = OmegaConf.create({"regularization": {"weight_decay": weight_decay},
                                               "optimizer": OmegaConf.load(CONF / "optimizer" / f"{name}.yaml")})
                    if name == option and target:
                        config.optimizer._target_ = target
                    built[name] = instantiate(OmegaConf.to_container(config, resolve=True)["optimizer"])
                errors = {dtype: trajectory_error(built[reference], built[option], dtype) for dtype in TOLERANCE}
            except Exception as error:  # the optimizer under test raised: that is its verdict
                errors = f"raised {type(error).__name__}: {first_line(error)}"
            yield option, setting, errors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.gradcheck", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("items", nargs="*", metavar="name | override",
                        help="modules to check by their conf/modules/scratch.yaml name (Linear, Conv2d, LSTM, "
                             "cross_entropy, ...; any case), all if none; overrides key=value swap in your own")
    args = parser.parse_args(argv)
    names = {item.lower() for item in args.items if "=" not in item}
    optimizer_overrides = [item for item in args.items if item.startswith("optimizer._target_=")]
    targets = [item.partition("=")[2] for item in optimizer_overrides]
    try:
        modules = modules_config([item for item in args.items if "=" in item and item not in optimizer_overrides])
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import torch

    from pipeline.scratch.cases import CASES
    from pipeline.scratch.check import TOLERANCE, check

    optimizers = {path.stem for path in (CONF / "optimizer").glob("scratch_*.yaml")}
    known = {case.key.lower() for case in CASES} | optimizers | {name.removeprefix("scratch_") for name in optimizers}
    if names - known:
        print(f"error: no module called {', '.join(sorted(names - known))}; known: "
              f"{', '.join(sorted({case.key for case in CASES} | optimizers))}", file=sys.stderr)
        return 2
    torch.set_num_threads(min(2, torch.get_num_threads()))
    print(f"{'module':<18}{'case':<62}{'gradcheck':<11}{'float64':<11}{'float32':<11}verdict")
    failed = 0
    for case in CASES:
        if names and case.key.lower() not in names:
            continue
        try:
            result = check(case, modules)
        except ConfigError as error:
            print(f"{case.key:<18}{case.label:<62}error: {error}")
            failed += 1
            continue
        except Exception as error:  # the module under test raised: that is its verdict, not a crash of the check
            print(f"{case.key:<18}{case.label:<62}FAIL: raised {type(error).__name__}: {first_line(error)}")
            failed += 1
            continue
        if result is None:
            print(f"{case.key:<18}{case.label:<62}(torch's own: not replaced)")
            continue
        errors = [f"{result.errors[dtype][0]:<11.1e}" for dtype in TOLERANCE]
        verdict = "ok" if result.passed else "FAIL: " + ", ".join(
            [] if result.gradcheck else ["gradcheck"]) + "; ".join(
            f" {dtype} worst at {where}" for dtype, (error, where) in result.errors.items()
            if error > TOLERANCE[dtype])
        print(f"{case.key:<18}{case.label:<62}{'pass' if result.gradcheck else 'FAIL':<11}{''.join(errors)}{verdict}")
        failed += not result.passed
    for option, setting, errors in optimizer_rows(names, targets[-1] if targets else None):
        if isinstance(errors, str):
            print(f"{option:<18}{setting:<62}FAIL: {errors}")
            failed += 1
            continue
        passed = all(error <= TOLERANCE[dtype] for dtype, error in errors.items())
        print(f"{option:<18}{setting:<62}{'-':<11}{''.join(f'{e:<11.1e}' for e in errors.values())}"
              f"{'ok' if passed else 'FAIL: the parameters leave the trajectory of torch.optim'}")
        failed += not passed
    print(f"tolerances: float64 {TOLERANCE[torch.float64]:.0e}, float32 {TOLERANCE[torch.float32]:.0e} "
          "(max |mine - torch| / max(1, max |torch|) over outputs, buffers and every gradient; optimizers: over "
          "every parameter after every step)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
