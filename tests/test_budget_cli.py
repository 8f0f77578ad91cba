"""`imageblocks train ... --budget`: the command ends on time, report and export included."""

from __future__ import annotations

import json
import time

from tests.test_cli import TINY, data, invoke  # noqa: F401 (data is a fixture)


def test_train_with_a_budget_ends_on_time_and_exports(data, tmp_path):  # noqa: F811
    out = tmp_path / "m"
    t0 = time.perf_counter()
    result = invoke(
        "train", "multilabel", "--csv", data / "labels.csv", "--images", data / "images",
        "--out", out, "--size", "32", "--budget", "20s", *TINY,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    assert result.exit_code == 0, result.output
    assert "the plan:" in result.stdout and "estimate:" in result.stdout
    assert "phase 1 (frozen" in result.stdout and "s planned" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    budget = metrics["budget"]
    assert 19.0 <= budget["actual_s"] <= 21.0, budget  # within 5% of the budget
    assert 18.0 <= wall <= 22.0
    assert budget["plan"]["budget_s"] == 20 and len(budget["phases"]) >= 2
    assert {"config.json", "model.safetensors", "loss.png", "results.png"} <= {
        p.name for p in out.iterdir()
    }
    assert metrics["epochs"] is None and metrics["lr"] > 0


def test_epochs_and_budget_together_are_refused(data, tmp_path):  # noqa: F811
    result = invoke(
        "train", "points", "--csv", data / "points.csv", "--images", data / "images",
        "--out", tmp_path / "p", "--epochs", "1", "--budget", "1m", *TINY,
    )  # fmt: skip
    assert result.exit_code == 1 and "not both" in result.output
    result = invoke(
        "train", "points", "--csv", data / "points.csv", "--images", data / "images",
        "--out", tmp_path / "p", "--budget", "ten", *TINY,
    )  # fmt: skip
    assert result.exit_code == 1 and "budget must be a positive duration" in result.output
