"""Right-padding share of the training batches with and without trainer.group_by_length (issue #9).

    python benchmarks/length_grouping.py --out /tmp/ablate-bench --batch-size 8

The CPU-size data of benchmarks/trl_cpu.py (2,000 pairs, prompts 60-120 tokens, completions 80-200
+ EOS, its own BPE tokenizer), tokenised by ablate. For seeds 0-2, every step of one epoch builds
the (2B, T) right-padded batch the trainer would; the figure is the share of its positions that
are padding, summed over the epoch. Some padding is left even in perfectly grouped batches: chosen
and rejected of one pair differ in length and share the batch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trl_cpu import prepare

from ablate.data.pairs import read_pairs_from_files, tokenize_pairs
from ablate.train.data_order import DataOrder, pair_lengths
from ablate.train.scoring import pair_batch


def padding_share(data, order: DataOrder, steps: int) -> float:
    real = total = 0
    for step in range(1, steps + 1):
        mask = pair_batch(data, order.batch(step), pad_id=0)["attention_mask"]
        real, total = real + mask.sum().item(), total + mask.numel()
    return 1 - real / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="/tmp/ablate-bench")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prepare(out)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    data = tokenize_pairs(read_pairs_from_files([str(out / "train.jsonl")], id_prefix="train-"), tokenizer,
                          max_length=512, max_prompt_length=256)
    steps = len(data) // args.batch_size
    for seed in range(3):
        plain = padding_share(data, DataOrder(len(data), args.batch_size, seed), steps)
        grouped = padding_share(data, DataOrder(len(data), args.batch_size, seed, lengths=pair_lengths(data)), steps)
        print(json.dumps({"seed": seed, "pairs": len(data), "batch_size": args.batch_size, "steps": steps,
                          "padding_share_plain": round(plain, 4), "padding_share_grouped": round(grouped, 4)}))


if __name__ == "__main__":
    main()
