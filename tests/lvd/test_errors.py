"""Every domain error derives from `LvdError`, and the command line prints each as `lvd: <message>`."""
from __future__ import annotations

import importlib
import inspect
import pkgutil

import torch

from lvd.cli import main
from lvd.errors import LvdError

PACKAGES = ("lvd", "flows", "tasks", "models", "storage")
# Raised and caught inside one module, never shown to a user: outcomes of a fetch, a dead decode
# worker (its image is recorded as failed), an address the network guard refuses (recorded per URL).
INTERNAL = {"tasks.crawl.fetch._Outcome", "tasks.crawl.fetch._Retry", "tasks.crawl.decode_pool.WorkerDied",
            "tasks.crawl.netguard.BlockedAddress"}


def project_exceptions() -> dict[str, type]:
    found = {}
    for name in PACKAGES:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{name}."):
            module = importlib.import_module(info.name)
            for attr, value in vars(module).items():
                if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == info.name:
                    found[f"{info.name}.{attr}"] = value
    return found


def test_every_error_lvd_defines_is_an_lvd_error():
    errors = project_exceptions()
    assert len(errors) > 20, sorted(errors)  # the walk reached the stages
    outside = sorted(n for n, cls in errors.items() if n not in INTERNAL and not issubclass(cls, LvdError))
    assert outside == [], f"derive these from lvd.errors.LvdError (or list them as internal): {outside}"
    assert all(n in errors for n in INTERNAL), "an internal error was renamed or removed"


def test_the_cli_prints_a_domain_error_as_one_line_and_exits_non_zero(tmp_path, capsys):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    assert main(["export", str(tmp_path / "foreign.pt"), str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lvd: ") and "holds a dict with keys ['weights']" in err and "Traceback" not in err
    assert main(["export", str(tmp_path / "absent.pt"), str(tmp_path / "out.safetensors")]) == 2
    assert capsys.readouterr().err.startswith("lvd: model ")
