"""Model quality against popularity, EASE and the ID two-tower, in one run.

Runs the main job on ml-latest-small with its defaults (20% of users held out
for validation by a seeded hash; cold-start movies of the latest title years
kept out of training), so that every scorer ranks the whole catalogue for the
same validation examples. Writes benchmarks/results/quality.json (every
metrics row, the cold-start split, EASE's `l2`, the issue's targets as
ratios) and rewrites the quality table of README.md between its markers.

    .venv/bin/python benchmarks/bench_quality.py [--epochs N] [-- extra flags]

Extra flags after `--` go to jobs/pipeline.py unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
README = REPO / "README.md"
BEGIN, END = "<!-- quality-table:begin -->", "<!-- quality-table:end -->"


def table(metrics: dict, quality: dict) -> str:
    rows = ["model", "popularity", "ease", "id_two_tower"]
    lines = [
        "| scorer | HR@10 | HR@100 | NDCG@10 | warm HR@100 | cold-start HR@100 |",
        "|---|---|---|---|---|---|",
    ]
    for name in rows:
        if name not in metrics:
            continue
        values = metrics[name]
        warm = metrics.get(f"warm:{name}", {}).get("hr@100", float("nan"))
        cold = metrics.get(f"cold:{name}", {}).get("hr@100", float("nan"))
        lines.append(
            f"| {name} | {values['hr@10']:.4f} | {values['hr@100']:.4f} | "
            f"{values['ndcg@10']:.4f} | {warm:.4f} | {cold:.4f} |"
        )
    split = quality["evaluation"]["cold_start"]
    examples = quality["evaluation"]["examples"]
    lines.append("")
    lines.append(
        f"{examples['all']} validation examples ({examples['cold']} with a "
        f"cold-start target: {split['cold_movies']} movies from "
        f"{split['first_year']} on, {100 * split['rating_share']:.1f}% of the "
        f"ratings, kept out of training). Targets: "
        + "; ".join(
            f"{name} {value['ratio']:.3f} (needs >= {value['needs']})"
            for name, value in quality["targets"].items()
        )
        + f". Measured by `make bench-quality` in {quality['wall_seconds']:.0f} s, "
        f"load average {quality['load_before']:.1f} before and "
        f"{quality['load_after']:.1f} after."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="bench-quality")
    parser.add_argument("--no-readme", action="store_true")
    args, extra = parser.parse_known_args()
    extra = [flag for flag in extra if flag != "--"]

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    command = [
        sys.executable,
        str(REPO / "jobs" / "pipeline.py"),
        "--name",
        args.name,
        "--runs-dir",
        str(REPO / "runs"),
        "--cache-dir",
        str(REPO / ".cache" / "embeddings"),
        "--id-baseline",
        "True",
        *extra,
    ]
    subprocess.run(command, check=True, cwd=REPO)
    wall = time.perf_counter() - started
    run = REPO / "runs" / args.name
    metrics = json.loads((run / "metrics.json").read_text())
    evaluation = json.loads((run / "evaluation.json").read_text())
    model = metrics["model"]["hr@100"]
    targets = {
        "model / ease HR@100": {
            "ratio": model / max(metrics["ease"]["hr@100"], 1e-12),
            "needs": 1.0,
        },
        "model / id_two_tower HR@100": {
            "ratio": model / max(metrics["id_two_tower"]["hr@100"], 1e-12),
            "needs": 1.2,
        },
        "cold / warm model HR@100": {
            "ratio": metrics["cold:model"]["hr@100"]
            / max(metrics["warm:model"]["hr@100"], 1e-12),
            "needs": 0.5,
        },
    }
    for value in targets.values():
        value["met"] = value["ratio"] >= value["needs"]
    quality = {
        "command": " ".join(command[1:]),
        "metrics": metrics,
        "evaluation": evaluation,
        "training": json.loads((run / "training.json").read_text()),
        "targets": targets,
        "wall_seconds": round(wall, 1),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quality.json").write_text(json.dumps(quality, indent=2) + "\n")
    text = table(metrics, quality)
    print(text)
    if not args.no_readme and BEGIN in README.read_text():
        readme = README.read_text()
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
        README.write_text(pattern.sub(f"{BEGIN}\n{text}\n{END}", readme))


if __name__ == "__main__":
    main()
