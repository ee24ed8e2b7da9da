"""Checks over a whole data source once its rows are pairs: skipped share, duplicates, leakage.

Run once per sweep at planning time (ablate/train/shared.py); what they find goes into the sweep's data
record (shared/data-*.json) and the report, and the two hard limits stop the sweep with a DataError:
more skipped rows than `data.max_bad_fraction`, more held-out pairs whose prompt is also a training
prompt than `data.max_overlap` (a share of the held-out pairs; default 0: held out means unseen).
Unpaired training rows (KTO data) count as duplicates when prompt, completion and label repeat.
"""

from __future__ import annotations

from ablate.data.pairs import PreferencePair, RowTally, UnpairedExample, prompt_key
from ablate.data.readers import DataError

EXAMPLES = 3  # how many offending rows or pairs a message and the record quote


def check_pairs(train: list[PreferencePair | UnpairedExample], heldout: list[PreferencePair], data_cfg,
                tally: RowTally) -> dict:
    """The record of what reading and checking found; raises DataError past a limit."""
    record = {
        "rows_read": dict(tally.rows),
        "rows_skipped": {source: dict(reasons) for source, reasons in tally.skipped.items()},
        "skipped_examples": dict(tally.examples),
        "rows_rewritten": {source: dict(what) for source, what in tally.rewrites.items()},
    }
    max_bad = float(data_cfg.get("max_bad_fraction", 0.0) or 0.0)
    if tally.total_rows and tally.total_skipped / tally.total_rows > max_bad:
        lines = [f"{source}: " + ", ".join(f"{n} {reason}" for reason, n in reasons.items())
                 for source, reasons in tally.skipped.items()]
        examples = [f"e.g. {example}" for example in list(tally.examples.values())[:EXAMPLES]]
        raise DataError(f"{tally.total_skipped} of {tally.total_rows} rows are bad "
                        f"({tally.total_skipped / tally.total_rows:.1%} > data.max_bad_fraction = {max_bad}); "
                        "nothing was run:\n  " + "\n  ".join(lines + examples))

    seen, duplicates, duplicate_ids = set(), 0, []
    for pair in train:
        if isinstance(pair, UnpairedExample):
            key = (prompt_key(pair.prompt), pair.completion, pair.label)
        else:
            key = (prompt_key(pair.prompt), prompt_key(pair.chosen), prompt_key(pair.rejected))
        if key in seen:
            duplicates += 1
            if len(duplicate_ids) < EXAMPLES:
                duplicate_ids.append(pair.pair_id)
        seen.add(key)
    record["duplicate_train_pairs"] = {"count": duplicates, "examples": duplicate_ids}

    train_prompts = {key[0] for key in seen}
    overlapping = [p for p in heldout if prompt_key(p.prompt) in train_prompts]
    record["heldout_prompts_in_train"] = {
        "count": len(overlapping), "of": len(heldout),
        "examples": [{"pair_id": p.pair_id, "prompt": prompt_key(p.prompt)[:200]} for p in overlapping[:EXAMPLES]],
    }
    max_overlap = float(data_cfg.get("max_overlap", 0.0) or 0.0)
    if heldout and len(overlapping) / len(heldout) > max_overlap:
        examples = ", ".join(f"{p.pair_id} ({prompt_key(p.prompt)[:60]!r})" for p in overlapping[:EXAMPLES])
        raise DataError(f"{len(overlapping)} of {len(heldout)} held-out pairs have a prompt that is also a training "
                        f"prompt (e.g. {examples}): held-out metrics would partly measure memorisation. Remove them "
                        f"from the held-out data, or allow a share with data.max_overlap (now {max_overlap})")
    return record
