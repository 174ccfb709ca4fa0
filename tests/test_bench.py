"""The benchmarks run (smallest size): they are measured by hand, but must not rot."""

import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def test_trace_bench_runs_and_methods_agree() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "trace.py"), "--facts", "1", "--samples", "3"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "speed-up: hybrid" in out.stdout and "max |score difference|: " in out.stdout
    rows = {
        line.split()[0]: line
        for line in out.stdout.splitlines()
        if line.split()[:1] in (["exact"], ["atp"], ["hybrid"])
    }
    assert set(rows) == {"exact", "atp", "hybrid"} and "Spearman r of cell effects" in out.stdout


def test_layers_bench_runs_every_variant(tmp_path: Path) -> None:
    """The layer-choice ablation end to end at smoke size (random weights: the trace refuses, and says so)."""
    import json

    from PIL import Image

    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "layers.py"), "--model", "random", "--items", "4", "--epochs", "1",
         "--random-seeds", "2", "--threads", "1", "--json", str(tmp_path / "t.json"),
         "--plot", str(tmp_path / "t.png")],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "traced: refused (" in out.stdout
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["base model", "random (seed 0)", "random (seed 1)", "first k", "last k",
                                            "all layers"]  # fmt: skip
    assert rows[3]["layers"] == [0, 1] and rows[5]["layers"] == [0, 1, 2, 3, 4, 5]
    assert all(0 <= r[k] <= 1 for r in rows for k in ("forget", "retain", "held_out", "utility"))
    img = np.asarray(Image.open(tmp_path / "t.png").convert("L"), dtype=float)
    assert img.shape[1] > 600 and img.std() > 20  # rendered, not blank


def test_unlearn_bench_runs_and_compares() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "unlearn.py"), "--layers", "2", "--hidden", "64", "--select", "1",
         "--steps", "2", "--batch", "4"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    ratios = out.stdout.strip().splitlines()[-1]
    assert ratios.startswith("ratios (layer-selected / full): trainable 0.")
    trainable = float(ratios.split("trainable ")[1].split(",")[0])
    optimizer = float(ratios.split("optimizer state ")[1].split(",")[0])
    assert 0 < trainable < 0.5 and optimizer == trainable  # AdamW keeps two fp32 moments per trainable value


def test_evaluate_bench_runs_and_metrics_agree() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "evaluate.py"), "--items", "8", "--max-new-tokens", "6", "--batch", "4"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "speed-up:" in out.stdout and out.stdout.strip().endswith("every metric equal: True")


def test_scale_bench_runs_at_toy_size(tmp_path: Path) -> None:
    import json

    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--facts", "1", "--steps", "1", "--items", "4",
         "--new-tokens", "4", "--mmlu-questions", "4", "--shots", "1", "--json", str(tmp_path / "scale.json")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "scale.json").read_text())
    (row,) = report["rows"]
    assert row["size"] == "toy" and row["unlearn_trainable"] > 0 and row["unlearn_peak_bytes"] > 0
    assert all(row[k] > 0 for k in ("trace_s_per_fact", "unlearn_steps_per_s", "evaluate_items_per_s",
                                    "mmlu_questions_per_s"))  # fmt: skip
    minutes = sum(report["projections"]["toy"].values()) / 60
    assert f"{minutes:.1f} min on one device" in out.stdout  # the printed projection is the measured one


def test_methods_bench_runs_each_method_through_the_attacks_and_the_gate(tmp_path: Path) -> None:
    """The method comparison end to end at smoke size (random weights): every column filled, a gate verdict
    and a report per method, the chart rendered."""
    import json

    from PIL import Image

    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "methods.py"), "--model", "random", "--items", "4", "--epochs", "1",
         "--methods", "sha256,chunked,sam+npo", "--threads", "1", "--json", str(tmp_path / "m.json"),
         "--plot", str(tmp_path / "m.png"), "--reports", str(tmp_path / "reports")],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = json.loads((tmp_path / "m.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["base model", "sha256", "chunked", "sam+npo"]
    for r in rows[1:]:
        assert all(
            0 <= r[k] <= 1 for k in ("forget", "retain", "held_out", "utility", "quant4_recovery", "rtt_recovery")
        )
        assert r["gate"] == "PASS" or r["gate"].startswith("FAIL: ")
        html = (tmp_path / "reports" / r["method"].replace("+", "-") / "report.html").read_text()
        assert "Attacks on forgetting" in html and "quant.int4-g128-sym" in html and "rtt" in html
    assert "sam+npo" in out.stdout.splitlines()[-1]  # the table's last row
    img = np.asarray(Image.open(tmp_path / "m.png").convert("L"), dtype=float)
    assert img.shape[1] > 1000 and img.std() > 20  # rendered, not blank


def test_continual_bench_runs_every_strategy(tmp_path: Path) -> None:
    """Compliance over time at smoke size (random weights): every strategy, every version scored on every
    batch so far, the table, the JSON and the batches × versions plot."""
    import json

    from PIL import Image

    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "continual.py"), "--model", "random", "--items", "4", "--batches", "2",
         "--epochs", "1", "--threads", "1", "--json", str(tmp_path / "c.json"), "--plot", str(tmp_path / "c.png")],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = json.loads((tmp_path / "c.json").read_text())["rows"]
    assert [(r["strategy"], r["version"]) for r in rows] == [(s, v) for s in ("naive", "incremental", "cumulative")
                                                             for v in (1, 2)]  # fmt: skip
    assert all(len(r["batch_forget"]) == r["version"] for r in rows)
    assert all(r["gate"] == "PASS" or r["gate"].startswith("FAIL: ") for r in rows)
    assert rows[3]["drift"] > rows[2]["drift"] > 0  # incremental v2 moved on from v1, not from the original
    img = np.asarray(Image.open(tmp_path / "c.png").convert("L"), dtype=float)
    assert img.shape[1] > 900 and img.std() > 20  # three panels, rendered


def test_adapters_bench_measures_lora_against_full_training() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "adapters.py"), "--layers", "1", "--ranks", "4", "--steps", "1"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines() if line.startswith(("full", "lora"))}
    assert set(rows) == {"full", "lora"}
    assert rows["full"][2] == "1.0000" and rows["full"][4] == "1.0000"
    trainable, state = float(rows["lora"][3]), float(rows["lora"][5])
    assert 0 < trainable < 0.05 and abs(state - trainable) < 0.001  # AdamW: two fp32 moments per trainable value
