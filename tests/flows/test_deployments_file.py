"""prefect.yaml is generated from flows/deployments.py and the presets; they must not drift."""
from pathlib import Path

import yaml

from flows.config import CurateConfig
from flows.deployments import DEPLOYMENTS, render

REPO = Path(__file__).resolve().parents[2]


def test_prefect_yaml_is_up_to_date():
    assert (REPO / "prefect.yaml").read_text() == render(), "run: python -m flows.deployments > prefect.yaml"


def test_every_deployment_parameter_validates_and_curate_has_a_schedule():
    doc = yaml.safe_load((REPO / "prefect.yaml").read_text())
    names = {(d.flow, d.name) for d in DEPLOYMENTS}
    assert ("curate-lvd", "cpu-tiny") in names
    for dep in doc["deployments"]:
        if dep["entrypoint"].startswith("flows/curate_lvd.py"):
            CurateConfig.model_validate(dep["parameters"]["cfg"])
    refresh = [d for d in doc["deployments"] if d["schedules"]]
    assert refresh and all(s["active"] is False and s["cron"] for d in refresh for s in d["schedules"])
