"""Row formats people actually use, on fixture files in exactly their layout (tests/fixtures/data/).

The bar: an HH-RLHF file (whole transcripts, no prompt column) trains with exactly the tokens of the
same data written as explicit prompt/chosen/rejected. The tokenizer here is byte-level, so a space
moved between prompt and completion would show.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ablate.data.pairs import RowFormat, RowTally, read_pairs_from_files, tokenize_pairs
from ablate.data.readers import DataError

FIXTURES = Path(__file__).parent / "fixtures" / "data"
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def byte_tokenizer(chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """Every byte its own token (GPT-2's byte alphabet, no merges): exact about spaces and newlines."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alphabet))}
    vocab |= {"<s>": len(vocab), "</s>": len(vocab) + 1, "<pad>": len(vocab) + 2}
    model = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    model.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=model, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tokenizer.chat_template = chat_template
    return tokenizer


def read(name: str, **options):
    return read_pairs_from_files([str(FIXTURES / name)], id_prefix="t-", **options)


def as_triples(pairs):
    return [(p.prompt, p.chosen, p.rejected) for p in pairs]


@pytest.mark.parametrize("chat_template", [None, CHAT_TEMPLATE])
def test_hh_rlhf_trains_with_exactly_the_tokens_of_the_explicit_layout(chat_template):
    tokenizer = byte_tokenizer(chat_template)
    hh, explicit = read("hh_rlhf.jsonl"), read("hh_explicit.jsonl")
    assert as_triples(hh) == as_triples(explicit)
    assert hh[0].prompt.endswith("\n\nAssistant:") and hh[0].chosen == " Paris."
    assert hh[2].chosen == " The answer is 4."  # the shared "The answer is" stays in the completions
    limits = dict(max_length=512, max_prompt_length=256)
    a, b = tokenize_pairs(hh, tokenizer, **limits), tokenize_pairs(explicit, tokenizer, **limits)
    assert (a.prompt_ids, a.chosen_ids, a.rejected_ids) == (b.prompt_ids, b.chosen_ids, b.rejected_ids)
    joke = "Why did the chicken cross the road? To get to the other side."
    if chat_template is None:
        assert tokenizer.decode(a.chosen_ids[1][:-1]) == " " + joke
    else:  # the transcript became its turns; the answer is the assistant message's content, stripped
        assert tokenizer.decode(a.prompt_ids[1]) == \
            "<user>Hi<assistant>Hello! How can I help?<user>Tell me a joke<assistant>"
        assert tokenizer.decode(a.chosen_ids[1][:-1]) == joke
    assert "\u2028" in tokenizer.decode(a.rejected_ids[4])  # a U+2028 inside a JSON string is not a line end


def test_hh_selected_explicitly_ignores_a_prompt_column_and_gives_the_same_pairs():
    assert as_triples(read("hh_prompt_and_transcripts.jsonl", row_format=RowFormat("implicit_prompt"))) == \
        as_triples(read("hh_explicit.jsonl"))


def test_a_prompt_column_beside_whole_transcripts_does_not_put_the_prompt_in_the_completions():
    tally = RowTally()
    pairs = read("hh_prompt_and_transcripts.jsonl", tally=tally)
    assert as_triples(pairs) == as_triples(read("hh_explicit.jsonl"))
    source = str(FIXTURES / "hh_prompt_and_transcripts.jsonl")
    assert tally.rewrites == {source: {"prompt repeated at the start of both completions (removed from them)": 5}}


def test_hh_transcripts_without_a_shared_prompt_are_a_clear_error():
    with pytest.raises(DataError) as error:
        read("hh_no_shared_prefix.jsonl")
    message = str(error.value)
    assert message.startswith(f"{FIXTURES / 'hh_no_shared_prefix.jsonl'} line 2: no prompt column, and 'chosen' and "
                              "'rejected' share no prefix ending at an assistant marker '\\n\\nAssistant:'")
    assert "data.columns.prompt" in message
    # the same transcripts under another marker convention
    custom = RowFormat(assistant_marker="\n\nHuman:")
    assert read("hh_rlhf.jsonl", row_format=custom)[0].prompt == "\n\nHuman:"


def test_explicit_format_demands_a_prompt_column():
    with pytest.raises(DataError, match=r"hh_rlhf.jsonl line 1: missing column 'prompt' \(columns: chosen, rejected\)"):
        read("hh_rlhf.jsonl", row_format=RowFormat("explicit"))


def test_column_mapping_reads_other_names_and_names_them_in_errors(tmp_path):
    columns = {"prompt": "question", "chosen": "good", "rejected": "bad", "id": "uid"}
    pairs = read("renamed_columns.jsonl", row_format=RowFormat(columns=columns))
    assert as_triples(pairs) == as_triples(read("hh_explicit.jsonl"))
    assert [p.pair_id for p in pairs] == ["q0", "q1", "q2", "q3", "q4"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "good": "a", "bad": ""}\n')
    with pytest.raises(DataError, match=r"bad.jsonl line 1: column 'bad' \(data.columns.rejected\) is empty"):
        read_pairs_from_files([str(bad)], id_prefix="", row_format=RowFormat(columns=columns))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing_column", "line 2: missing column 'rejected' (columns: prompt, chosen)"),
        ("empty_string", "line 2: column 'chosen' is empty"),
        ("null", "line 2: column 'chosen' is null"),
        ("chosen_equals_rejected", "line 2: 'chosen' and 'rejected' are identical"),
        ("wrong_type", "line 2: column 'chosen' must be a string or a list of messages, got 42"),
        ("malformed_json", "line 2: malformed JSON: Expecting ',' delimiter (column 39)"),
        ("no_assistant_turn", "line 2: column 'chosen' must end with an assistant message, not 'user'"),
    ],
)
def test_each_kind_of_broken_row_is_named_by_file_and_line(name, message):
    path = FIXTURES / f"broken_{name}.jsonl"
    with pytest.raises(DataError) as error:
        read(path.name)
    assert str(error.value).startswith(f"{path} {message}")


# --- named data configs (conf/data/), read offline from local directories in the hub repos' layouts ----------------
def conversation(prompt: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def ultrafeedback_row(i: int) -> dict:
    prompt = f"Question {i}?"
    return {"prompt": prompt, "prompt_id": f"id{i}", "chosen": conversation(prompt, f"Good answer {i}."),
            "rejected": conversation(prompt, f"Bad answer {i}."), "messages": conversation(prompt, f"Good answer {i}."),
            "score_chosen": 8.0, "score_rejected": 3.0}


def test_ultrafeedback_binarized_config_reads_its_splits_and_layout(compose_cfg, tmp_path):
    import pandas as pd

    from ablate.train.shared import load_pairs

    (tmp_path / "uf" / "data").mkdir(parents=True)
    for split, rows in (("train_prefs", range(4)), ("test_prefs", range(4, 6)), ("train_gen", range(6, 7))):
        pd.DataFrame([ultrafeedback_row(i) for i in rows]).to_parquet(
            tmp_path / "uf" / "data" / f"{split}-00000-of-00001.parquet")
    cfg = compose_cfg(["data=ultrafeedback", f"data.path={tmp_path / 'uf'}"])
    assert (cfg.data.train_split, cfg.data.heldout_split) == ("train_prefs", "test_prefs")
    assert compose_cfg(["data=ultrafeedback"]).data.path == "HuggingFaceH4/ultrafeedback_binarized"
    train, heldout = load_pairs(cfg.data)
    assert [p.pair_id for p in train] == [f"train_prefs-{i}" for i in range(4)]
    assert heldout[0].prompt == [{"role": "user", "content": "Question 4?"}]
    assert (heldout[0].chosen, heldout[0].rejected) == ("Good answer 4.", "Bad answer 4.")


def test_hh_rlhf_config_reads_transcripts_from_subset_folders(compose_cfg, tmp_path):
    import gzip
    import json

    from ablate.train.shared import load_pairs

    lines = (FIXTURES / "hh_rlhf.jsonl").read_text().split("\n")  # not splitlines(): a row holds a U+2028
    rows = [json.loads(line) for line in lines if line]
    for subset, split, part in (("harmless-base", "train", rows[:2]), ("helpful-base", "train", rows[2:4]),
                                ("helpful-base", "test", rows[4:])):
        (tmp_path / "hh" / subset).mkdir(parents=True, exist_ok=True)
        with gzip.open(tmp_path / "hh" / subset / f"{split}.jsonl.gz", "wt") as f:
            f.write("".join(json.dumps(r) + "\n" for r in part))
    cfg = compose_cfg(["data=hh_rlhf", f"data.path={tmp_path / 'hh'}"])
    assert compose_cfg(["data=hh_rlhf"]).data.path == "Anthropic/hh-rlhf" and cfg.data.format == "implicit_prompt"
    train, heldout = load_pairs(cfg.data)
    explicit = as_triples(read("hh_explicit.jsonl"))
    assert sorted(as_triples(train)) == sorted(explicit[:4]) and as_triples(heldout) == explicit[4:]


def test_completions_that_merely_start_with_a_plain_prompt_are_kept_and_counted(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "2 + 2 =", "chosen": "2 + 2 = 4", "rejected": "2 + 2 = 5"}\n')
    tally = RowTally()
    [pair] = read_pairs_from_files([str(path)], id_prefix="", tally=tally)
    assert (pair.chosen, pair.rejected) == ("2 + 2 = 4", "2 + 2 = 5")
    assert list(tally.rewrites[str(path)]) == ["both completions start with the whole prompt (kept: the prompt does "
                                               "not end at an assistant marker)"]


def test_data_columns_from_the_command_line_reach_the_reader(compose_cfg):
    from ablate.train.shared import load_pairs

    renamed = FIXTURES / "renamed_columns.jsonl"
    cfg = compose_cfg(["data=files", f"data.train_files=[{renamed}]", f"data.heldout_files=[{renamed}]",
                       "data.columns={prompt: question, chosen: good, rejected: bad}"])
    train, _ = load_pairs(cfg.data)
    assert as_triples(train) == as_triples(read("hh_explicit.jsonl"))
