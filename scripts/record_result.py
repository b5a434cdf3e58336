#!/usr/bin/env python
"""Record a finished recipe run in configs/results.json (read by `zoo list --markdown` for MODELS.md).

    python scripts/record_result.py configs/vision/vit_irpe_tiny_fmnist.yaml runs/vit_irpe_tiny_fmnist \
        --machine "2-core CPU"
"""
import argparse
import datetime
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe")
    ap.add_argument("run_dir")
    ap.add_argument("--machine", default="2-core CPU, no GPU")
    ap.add_argument("--metric", default=None, help="final metric to show (default: the task's main metric)")
    args = ap.parse_args()
    summary_path = Path(args.run_dir) / "summary.json"
    if not summary_path.exists():
        print(f"{summary_path} not found: is the run finished?", file=sys.stderr)
        return 1
    s = json.loads(summary_path.read_text())
    if s.get("interrupted"):
        print(f"{summary_path}: the run was interrupted; finish it with --resume first", file=sys.stderr)
        return 1
    metric = args.metric or s["main_metric"]
    if metric not in s["final"]:
        print(f"{summary_path}: no final metric {metric!r}; there are {', '.join(s['final'])}", file=sys.stderr)
        return 1
    row = {
        "recipe": args.recipe, "model": s["model"], "dataset": s["data"].get("dataset", "?") if isinstance(s["data"], dict)
        else str(s["data"]), "metric": metric, "value": s["final"][metric], "wall_time_s": s["wall_time_s"],
        "params": s["params"], "epochs": s["epochs"], "amp": s["amp"], "machine": args.machine,
        "date": datetime.date.today().isoformat(),
    }
    from zoo.io import atomic_write_text

    path = ROOT / "configs" / "results.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    rows = [r for r in rows if r["recipe"] != args.recipe] + [row]
    atomic_write_text(path, json.dumps(sorted(rows, key=lambda r: r["recipe"]), indent=2) + "\n")
    print(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
