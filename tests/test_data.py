"""Tests for ablate/data/pairs.py: readers, validation errors, tokenisation, truncation, held-out split.

Everything is local: a word-level tokenizer built in code (no hub), data files written to tmp_path.
"""

from __future__ import annotations

import json
import time

import datasets
import pandas as pd
import pytest
from conftest import slowness
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast

from ablate.data.pairs import (
    DataError,
    PreferencePair,
    read_pairs_from_files,
    read_pairs_from_hub,
    rows_to_pairs,
    split_heldout,
    split_validation_test,
    tokenize_pairs,
)

WORDS = ["<pad>", "<unk>", "<s>", "</s>", "user:", "assistant:", "system:"]
WORDS += [f"w{i}" for i in range(20)] + ["hello", "world", "yes", "no", "maybe"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)

ROWS = [
    {"prompt": "hello world", "chosen": "yes", "rejected": "no"},
    {"prompt": "w1 w2", "chosen": "w3 w4", "rejected": "w5"},
    {"prompt": "w6", "chosen": "maybe", "rejected": "yes no"},
]


def make_tokenizer(chat_template: str | None = None) -> PreTrainedTokenizerFast:
    model = Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    model.pre_tokenizer = WhitespaceSplit()
    # BOS on single sequences, like Llama tokenizers; add_special_tokens=False skips it.
    model.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=model, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture(autouse=True)
def private_datasets_cache(tmp_path, monkeypatch):
    # load_dataset writes Arrow caches; keep them out of the user's ~/.cache.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_parquet(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)
    return str(path)


def conversation(prompt, answer):
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


# --- readers --------------------------------------------------------------------------------------


def test_jsonl_json_and_parquet_readers_agree(tmp_path):
    jsonl = read_pairs_from_files([write_jsonl(tmp_path / "d.jsonl", ROWS)], id_prefix="t-")
    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    as_json = read_pairs_from_files([str(tmp_path / "d.json")], id_prefix="t-")
    parquet = read_pairs_from_files([write_parquet(tmp_path / "d.parquet", ROWS)], id_prefix="t-")
    assert jsonl == as_json == parquet
    assert jsonl[1] == PreferencePair("t-1", "w1 w2", "w3 w4", "w5", None)


def test_id_and_slice_columns(tmp_path):
    rows = [dict(r, id=f"x{i}", slice=["clean", None, "verbose"][i]) for i, r in enumerate(ROWS)]
    pairs = read_pairs_from_files([write_parquet(tmp_path / "d.parquet", rows)], id_prefix="t-")
    assert [p.pair_id for p in pairs] == ["x0", "x1", "x2"]
    assert [p.slice for p in pairs] == ["clean", None, "verbose"]


def test_several_files_get_distinct_default_ids(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", ROWS[:2])
    b = write_parquet(tmp_path / "b.parquet", ROWS[2:])
    pairs = read_pairs_from_files([a, b], id_prefix="t-")
    assert [p.pair_id for p in pairs] == ["t-a-0", "t-a-1", "t-b-0"]
    c = write_jsonl(tmp_path / "c.jsonl", [dict(ROWS[0], id="x")])
    d = write_jsonl(tmp_path / "d.jsonl", [dict(ROWS[1], id="x")])
    with pytest.raises(ValueError, match=f"{d}: id 'x' is already used in {c}"):
        read_pairs_from_files([c, d], id_prefix="t-")


def test_hub_reader_on_local_parquet_directory(tmp_path):
    write_parquet(tmp_path / "ds" / "train-00000.parquet", ROWS[:2])
    write_parquet(tmp_path / "ds" / "test-00000.parquet", ROWS[2:])
    pairs = read_pairs_from_hub(str(tmp_path / "ds"), "test")
    assert pairs == [PreferencePair("test-0", "w6", "maybe", "yes no")]


def test_hub_reader_on_ultrafeedback_conversational_format(tmp_path):
    # HuggingFaceH4/ultrafeedback_binarized: prompt string, chosen/rejected full conversations.
    rows = [
        {
            "prompt": "hello",
            "prompt_id": "p0",
            "chosen": conversation("hello", "yes"),
            "rejected": conversation("hello", "no"),
            "score_chosen": 8.0,
            "score_rejected": 2.0,
        },
    ]
    write_parquet(tmp_path / "uf" / "data" / "test_prefs-00000-of-00001.parquet", rows)
    write_parquet(tmp_path / "uf" / "data" / "train_prefs-00000-of-00001.parquet", rows)
    [pair] = read_pairs_from_hub(str(tmp_path / "uf"), "test_prefs")
    assert pair == PreferencePair("test_prefs-0", [{"role": "user", "content": "hello"}], "yes", "no")


def test_prompt_column_used_when_completions_are_bare_assistant_messages():
    # TRL's conversational format: prompt messages apart, chosen/rejected = [assistant message].
    system = [{"role": "system", "content": "w0"}, {"role": "user", "content": "hello"}]
    row = {
        "prompt": system,
        "chosen": [{"role": "assistant", "content": "yes"}],
        "rejected": [{"role": "assistant", "content": "no"}],
    }
    [pair] = rows_to_pairs([row], source="mem", id_prefix="")
    assert (pair.prompt, pair.chosen, pair.rejected) == (system, "yes", "no")


# --- errors name the file, the row and the column -------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        ({"chosen": ""}, "line 2: column 'chosen' is empty"),
        ({"chosen": "  "}, "line 2: column 'chosen' is empty"),
        ({"rejected": None}, "line 2: column 'rejected' is null"),
        ({"prompt": ""}, "line 2: column 'prompt' is empty"),
        ({"rejected": 5}, "line 2: column 'rejected' must be a string or a list of messages, got 5"),
        ({"chosen": "w5"}, "line 2: 'chosen' and 'rejected' are identical"),
        ({"chosen": None, "rejected": None, "prompt": None}, "line 2: column 'chosen' is null"),
    ],
)
def test_bad_row_errors_name_file_line_and_column(tmp_path, change, message):
    path = write_jsonl(tmp_path / "train.jsonl", [ROWS[0], {**ROWS[1], **change}, ROWS[2]])
    with pytest.raises(DataError) as error:
        read_pairs_from_files([path], id_prefix="t-")
    assert str(error.value).startswith(f"{path} {message}")


def test_a_column_missing_from_one_jsonl_line_is_reported_as_missing_at_its_line(tmp_path):
    path = tmp_path / "train.jsonl"
    # a blank line counts as a line (editors number it) but is not a row
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps({"prompt": "w1", "chosen": "yes"}) + "\n")
    with pytest.raises(DataError) as error:
        read_pairs_from_files([str(path)], id_prefix="t-")
    assert str(error.value) == f"{path} line 3: missing column 'rejected' (columns: prompt, chosen)"


def test_malformed_json_line_names_its_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join([json.dumps(ROWS[0]), json.dumps(ROWS[1]), '{"prompt": "w1", "chosen": "yes",']))
    with pytest.raises(DataError, match=r"train.jsonl line 3: malformed JSON: Expecting property name"):
        read_pairs_from_files([str(path)], id_prefix="t-")
    path.write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n")
    with pytest.raises(DataError, match=r"train.jsonl line 2: a row must be a JSON object, got \[1, 2\]"):
        read_pairs_from_files([str(path)], id_prefix="t-")


def test_json_array_elements_are_named_by_the_line_they_start_on(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([ROWS[0], ROWS[1], {**ROWS[2], "chosen": ""}], indent=2))
    start = [i for i, line in enumerate(path.read_text().splitlines(), 1) if line == "  {"][2]  # third element
    with pytest.raises(DataError) as error:
        read_pairs_from_files([str(path)], id_prefix="t-")
    assert str(error.value) == f"{path} line {start}: column 'chosen' is empty"
    path.write_text('[\n{"prompt": "w1", "chosen": "yes", "rejected": "no"},\n{"prompt": "w2" "chosen"}\n]')
    with pytest.raises(DataError, match=r"train.json line 3: malformed JSON: Expecting ',' delimiter"):
        read_pairs_from_files([str(path)], id_prefix="t-")


def test_parquet_rows_are_named_by_row_index(tmp_path):
    path = write_parquet(tmp_path / "train.parquet", [ROWS[0], ROWS[1], {**ROWS[2], "rejected": None}])
    with pytest.raises(DataError) as error:
        read_pairs_from_files([path], id_prefix="t-")
    assert str(error.value) == f"{path} row index 2: column 'rejected' is null"


def test_missing_required_column_lists_the_columns(tmp_path):
    rows = [{"prompt": "w1", "chosen": "yes", "response": "no"}]
    path = write_parquet(tmp_path / "train.parquet", rows)
    expected = r"row index 0: missing column 'rejected' \(columns: prompt, chosen, response\)"
    with pytest.raises(DataError, match=expected):
        read_pairs_from_files([path], id_prefix="t-")


def test_missing_file_and_unsupported_extension(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: data file not found"):
        read_pairs_from_files([str(tmp_path / "nope.jsonl")], id_prefix="t-")
    csv = tmp_path / "train.csv"
    csv.write_text("prompt,chosen,rejected\n")
    with pytest.raises(ValueError, match=r"train.csv: unsupported file type '.csv'"):
        read_pairs_from_files([str(csv)], id_prefix="t-")


@pytest.mark.parametrize(
    "row, message",
    [
        (
            {
                "prompt": "w1",
                "chosen": conversation("w1", "yes"),
                "rejected": [{"role": "user", "content": "no"}],
            },
            "src row index 0: column 'rejected' must end with an assistant message, not 'user'",
        ),
        (
            {"prompt": "w1", "chosen": conversation("w1", "yes"), "rejected": conversation("w2", "no")},
            "src row index 0: 'chosen' and 'rejected' differ before their final assistant message",
        ),
        ({"prompt": "w1", "chosen": [], "rejected": "no"}, "src row index 0: column 'chosen' is empty"),
        (
            {"prompt": "w1", "chosen": [{"content": "yes"}], "rejected": "no"},
            "src row index 0: column 'chosen' has a message without string 'role'/'content'",
        ),
        (
            {"prompt": "w1", "chosen": "yes", "rejected": "no", "id": None},
            "src row index 0: column 'id' must be a non-empty string or integer",
        ),
        (
            {"prompt": "w1", "chosen": "yes", "rejected": "no", "slice": 3},
            "src row index 0: column 'slice' must be a non-empty string or null",
        ),
    ],
)
def test_bad_message_lists_and_optional_columns(row, message):
    with pytest.raises(ValueError) as error:
        rows_to_pairs([row], source="src", id_prefix="")
    assert str(error.value).startswith(message)


def test_duplicate_ids_and_empty_input():
    rows = [dict(ROWS[0], id="a"), dict(ROWS[1], id="b"), dict(ROWS[2], id="a")]
    with pytest.raises(ValueError, match="src row index 2: id 'a' is already used at src row index 0"):
        rows_to_pairs(rows, source="src", id_prefix="")
    with pytest.raises(ValueError, match="src: no rows"):
        rows_to_pairs([], source="src", id_prefix="")


# --- tokenisation ---------------------------------------------------------------------------------


def decode(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=False)


def test_without_chat_template_bos_is_added_and_completions_end_in_eos():
    tokenizer = make_tokenizer()
    pairs = rows_to_pairs(ROWS, source="mem", id_prefix="t-")
    tokens = tokenize_pairs(pairs, tokenizer, max_length=64, max_prompt_length=32)
    assert len(tokens) == 3 and tokens.pair_ids == ["t-0", "t-1", "t-2"] and tokens.slices == [None] * 3
    assert decode(tokenizer, tokens.prompt_ids[0]) == "<s> hello world"
    assert decode(tokenizer, tokens.chosen_ids[1]) == "w3 w4 </s>"
    assert all(ids[-1] == tokenizer.eos_token_id for ids in tokens.chosen_ids + tokens.rejected_ids)
    assert all(tokenizer.bos_token_id not in ids for ids in tokens.chosen_ids + tokens.rejected_ids)


def test_message_prompt_without_template_joins_contents():
    tokenizer = make_tokenizer()
    row = {
        "prompt": "w0",
        "chosen": conversation("hello world", "yes"),
        "rejected": conversation("hello world", "no"),
    }
    tokens = tokenize_pairs(
        rows_to_pairs([row], source="mem", id_prefix=""), tokenizer, max_length=64, max_prompt_length=32
    )
    assert decode(tokenizer, tokens.prompt_ids[0]) == "<s> hello world"


def test_chat_template_is_applied_to_prompts():
    tokenizer = make_tokenizer(CHAT_TEMPLATE)
    rows = [
        ROWS[0],  # a plain-string prompt becomes one user message
        {
            "prompt": "unused",
            "chosen": [{"role": "system", "content": "w0"}, *conversation("w1", "yes")],
            "rejected": [{"role": "system", "content": "w0"}, *conversation("w1", "no")],
        },
    ]
    tokens = tokenize_pairs(
        rows_to_pairs(rows, source="mem", id_prefix=""), tokenizer, max_length=64, max_prompt_length=32
    )
    assert decode(tokenizer, tokens.prompt_ids[0]) == "<s> user: hello world assistant:"
    assert decode(tokenizer, tokens.prompt_ids[1]) == "<s> system: w0 user: w1 assistant:"
    assert tokens.prompt_ids[0].count(tokenizer.bos_token_id) == 1  # not added twice
    assert decode(tokenizer, tokens.rejected_ids[1]) == "no </s>"


def test_truncation_cuts_prompt_from_left_then_completion_from_right():
    tokenizer = make_tokenizer()
    prompt = " ".join(f"w{i}" for i in range(10))  # 11 tokens with BOS
    pair = PreferencePair("p", prompt, "w10 w11 w12 w13 w14 w15", "w16 w17")  # 7 and 3 tokens with EOS
    tokens = tokenize_pairs([pair], tokenizer, max_length=8, max_prompt_length=4)
    # The prompt keeps BOS and its end; the completions get the remaining 4 tokens from their start.
    assert decode(tokenizer, tokens.prompt_ids[0]) == "<s> w7 w8 w9"
    assert decode(tokenizer, tokens.chosen_ids[0]) == "w10 w11 w12 w13"
    assert decode(tokenizer, tokens.rejected_ids[0]) == "w16 w17 </s>"
    for completion in (tokens.chosen_ids[0], tokens.rejected_ids[0]):
        assert len(tokens.prompt_ids[0]) + len(completion) <= 8


def test_short_pairs_are_not_truncated_and_prompt_cut_only_when_needed():
    tokenizer = make_tokenizer()
    pair = PreferencePair("p", "w0 w1 w2 w3 w4", "yes", "no")  # 6 + 2 tokens: fits in 8
    tokens = tokenize_pairs([pair], tokenizer, max_length=8, max_prompt_length=2)
    assert len(tokens.prompt_ids[0]) == 6
    # A prompt already within max_prompt_length is left whole; only the completion is cut.
    pair = PreferencePair("q", "w0", "w1 w2 w3 w4 w5 w6 w7 w8", "no")
    tokens = tokenize_pairs([pair], tokenizer, max_length=6, max_prompt_length=3)
    assert decode(tokenizer, tokens.prompt_ids[0]) == "<s> w0"
    assert decode(tokenizer, tokens.chosen_ids[0]) == "w1 w2 w3 w4"


def test_tokenize_errors():
    tokenizer = make_tokenizer()
    pairs = rows_to_pairs(ROWS, source="mem", id_prefix="")
    with pytest.raises(ValueError, match="max_prompt_length < max_length"):
        tokenize_pairs(pairs, tokenizer, max_length=8, max_prompt_length=8)
    with pytest.raises(ValueError, match="pair 'bad': 'chosen' and 'rejected' are identical"):
        tokenize_pairs(
            [PreferencePair("bad", "w1", "yes", "yes")], tokenizer, max_length=8, max_prompt_length=4
        )
    tokenizer.eos_token = None
    with pytest.raises(ValueError, match="no EOS token"):
        tokenize_pairs(pairs, tokenizer, max_length=8, max_prompt_length=4)


def test_identical_tokens_after_truncation_warn():
    pair = PreferencePair("same-start", "w0", "w1 w2 w3", "w1 w2 w4")
    with pytest.warns(UserWarning, match="1 pair.*identical chosen/rejected tokens.*same-start"):
        tokenize_pairs([pair], make_tokenizer(), max_length=4, max_prompt_length=2)


def test_tokenising_20k_pairs_is_fast():
    pairs = [
        PreferencePair(str(i), f"w{i % 7} w{i % 11} hello", f"w{i % 5} yes world", "no w3 maybe")
        for i in range(20_000)
    ]
    bound = 10 * slowness()  # 10 s of CPU on the core the bound was set on (tests/conftest.py)
    for tokenizer in (make_tokenizer(), make_tokenizer(CHAT_TEMPLATE)):
        start = time.process_time()  # CPU time: not the waits another test worker adds to a shared machine
        tokens = tokenize_pairs(pairs, tokenizer, max_length=32, max_prompt_length=16)
        assert time.process_time() - start < bound
        assert len(tokens) == 20_000


# --- held-out split -------------------------------------------------------------------------------


def test_split_heldout_is_deterministic_disjoint_and_complete():
    pairs = [PreferencePair(str(i), f"w{i}", "yes", "no") for i in range(100)]
    train, heldout = split_heldout(pairs, 0.2, seed=3)
    assert len(heldout) == 20 and len(train) == 80
    assert {p.pair_id for p in train}.isdisjoint(p.pair_id for p in heldout)
    assert sorted(train + heldout, key=lambda p: int(p.pair_id)) == pairs
    assert split_heldout(pairs, 0.2, seed=3) == (train, heldout)
    assert split_heldout(pairs, 0.2, seed=4)[1] != heldout


def test_split_heldout_keeps_one_pair_on_each_side_and_checks_fraction():
    pairs = [PreferencePair(str(i), f"w{i}", "yes", "no") for i in range(3)]
    assert [len(part) for part in split_heldout(pairs, 0.01, seed=0)] == [2, 1]
    assert [len(part) for part in split_heldout(pairs, 0.99, seed=0)] == [1, 2]
    for fraction in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\)"):
            split_heldout(pairs, fraction, seed=0)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        split_heldout(pairs[:1], 0.5, seed=0)


def test_split_heldout_keeps_pairs_of_one_prompt_on_one_side():
    pairs = [PreferencePair(str(i), f"w{i % 10}", "yes", "no") for i in range(100)]  # 10 pairs per prompt
    for seed in range(5):
        train, heldout = split_heldout(pairs, 0.2, seed=seed)
        assert len(heldout) == 20
        assert {p.prompt for p in train}.isdisjoint(p.prompt for p in heldout)
    with pytest.raises(ValueError, match="every pair has the same prompt"):
        split_heldout([PreferencePair(str(i), "w1", "yes", "no") for i in range(5)], 0.2, seed=0)
# --- validation / test split (tuned sweeps) ----------------------------------------------------------


def test_validation_test_split_is_disjoint_seeded_and_sized():
    pairs = [PreferencePair(str(i), "w1", "yes", "no", slice="a" if i % 2 else "b") for i in range(50)]
    tagged = split_validation_test(pairs, 20, None, seed=7)
    assert [p.pair_id for p in tagged] == [p.pair_id for p in pairs]  # the rest is test; order kept
    validation = {p.pair_id for p in tagged if p.split == "validation"}
    test = {p.pair_id for p in tagged if p.split == "test"}
    assert len(validation) == 20 and len(test) == 30 and validation.isdisjoint(test)
    assert all(p.slice == q.slice for p, q in zip(tagged, pairs, strict=True))
    assert split_validation_test(pairs, 20, None, seed=7) == tagged
    assert {p.pair_id for p in split_validation_test(pairs, 20, None, seed=8) if p.split == "validation"} != validation
    sized = split_validation_test(pairs, 10, 15, seed=7)
    assert [sum(p.split == s for p in sized) for s in ("validation", "test")] == [10, 15]
    for validation_pairs, test_pairs in ((50, None), (0, 5), (30, 21), (10, 0)):
        with pytest.raises(ValueError, match="data.validation_pairs"):
            split_validation_test(pairs, validation_pairs, test_pairs, seed=0)
