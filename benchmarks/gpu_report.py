"""benchmarks/gpu_all.sh's results folder as one markdown section for docs/benchmarks.md.

    python benchmarks/gpu_report.py benchmarks/results/gpu-<time> [--dry-run] > results.md

Reads steps.tsv (each step's exit status and wall time) and the last JSON line of each step's log (what
gpu_step.py / gpu_trl_step.py print). Exits 1 when a step failed, after writing the section.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def last_json(log: Path) -> dict | None:
    if not log.exists():
        return None
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    steps = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines() if line.strip()]
    gpu = (out / "gpu.txt").read_text().strip() if (out / "gpu.txt").exists() else "none (CPU)"
    lines = [f"### GPU run {out.name}" + (" (dry run: toy sizes on the CPU, no timing claim)" if args.dry_run else ""),
             "", f"Device: {gpu}. Command: `bash benchmarks/gpu_all.sh" + (" --dry-run" if args.dry_run else "") + "`.",
             "", "| step | exit | wall s |", "|---|---|---|"]
    lines += [f"| {name} | {rc}{' FAILED' if rc != '0' else ''} | {wall} |" for name, rc, wall in steps]
    results = {name: last_json(out / f"{name}.log") for name, _, _ in steps}
    lines += ["", "| model | objective | ablate tokens/s | TRL tokens/s | ablate ÷ TRL | ablate peak GB | TRL peak GB "
              "| ablate MFU | TRL MFU |", "|---|---|---|---|---|---|---|---|---|"]
    for name, ours in results.items():
        if not name.startswith("ablate-") or ours is None:
            continue
        theirs = results.get("trl-" + name[len("ablate-"):]) or {}
        ratio = ours["tokens_per_s"] / theirs["tokens_per_s"] if theirs.get("tokens_per_s") else None
        model = ours["model"] + (" (gradient checkpointing)" if ours.get("gradient_checkpointing") else "")
        lines.append(f"| {model} | {ours['objective']} | {fmt(ours['tokens_per_s'], 0)} | "
                     f"{fmt(theirs.get('tokens_per_s'), 0)} | {fmt(ratio, 2)} | {fmt(ours.get('peak_gpu_gb'), 2)} | "
                     f"{fmt(theirs.get('peak_gpu_gb'), 2)} | {fmt(ours.get('mfu'), 3)} | {fmt(theirs.get('mfu'), 3)} |")
    cells = list((out / "embedded" / "cells").glob("*/metrics.json")) if (out / "embedded").exists() else []
    lines += ["", f"Embedded sweep: {len(cells)} cells finished"
              + ("; report: embedded/report/report.html" if (out / "embedded" / "report").exists() else "") + "."]
    print("\n".join(lines))
    return 1 if any(rc != "0" for _, rc, _ in steps) else 0


if __name__ == "__main__":
    sys.exit(main())
