"""Time the planning-time data step on N generated pairs (not collected by pytest).

    .venv/bin/python tests/bench_data_planning.py 100000

Prints: read + validate (JSONL pairs, HH transcripts, then N unpaired KTO rows), then the whole
planning step of a sweep (read, validate, checks, tokenise with the embedded word-level tokenizer, store).
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path

import hydra

import ablate.config
from ablate.data.pairs import RowTally, read_pairs_from_files
from ablate.sweepdir.ids import as_plain
from ablate.train.shared import prepare_sweep_data

CONF = Path(__file__).resolve().parents[1] / "conf"


def main(n: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="ablate-bench-"))
    rng = random.Random(0)
    words = "echo rev copy : a b c d e f g h i j k l m n o p".split()

    def text(k: int) -> str:
        return " ".join(rng.choice(words) for _ in range(k))

    rows = [{"prompt": f"q{i} " + text(30), "chosen": text(40), "rejected": text(35)} for i in range(n)]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    hh = [{"chosen": f"\n\nHuman: {r['prompt']}\n\nAssistant: {r['chosen']}",
           "rejected": f"\n\nHuman: {r['prompt']}\n\nAssistant: {r['rejected']}"} for r in rows]
    (root / "hh.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hh))
    kto = [{"prompt": r["prompt"], "completion": r["chosen" if i % 2 else "rejected"], "label": bool(i % 2)}
           for i, r in enumerate(rows)]
    (root / "kto.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kto))
    heldout = [{"prompt": f"h{i} " + text(30), "chosen": text(40), "rejected": text(35)} for i in range(1000)]
    (root / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in heldout))
    for name in ("train.jsonl", "hh.jsonl", "kto.jsonl"):
        started = time.perf_counter()
        pairs = read_pairs_from_files([str(root / name)], id_prefix="t-", tally=RowTally())
        print(f"{name}: read + validate {len(pairs)} rows: {time.perf_counter() - started:.2f} s", flush=True)
    ablate.config.register_configs()
    with hydra.initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for name in ("train.jsonl", "hh.jsonl", "kto.jsonl"):
            cfg = hydra.compose("config", overrides=[
                f"objective={'kto' if name == 'kto.jsonl' else 'dpo'}", "data=files",
                f"data.train_files=[{root / name}]", f"data.heldout_files=[{root / 'heldout.jsonl'}]",
                "data.max_length=256", "data.max_prompt_length=128"])
            started = time.perf_counter()
            prepare_sweep_data([as_plain(cfg)], root / f"shared-{name}")
            print(f"{name}: planning (read, validate, checks, tokenise, store): "
                  f"{time.perf_counter() - started:.2f} s", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
