"""Pairs through a chat template (ablate/data/chat.py): transcripts as turns, TRL's layout, truncation by turns."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast

from ablate.data.chat import ChatTruncation, transcript_messages
from ablate.data.pairs import PreferencePair, tokenize_pairs

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Every byte one token, role headers and EOS single special tokens: lengths are easy to count."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    model = Tokenizer(BPE({c: i for i, c in enumerate(sorted(alphabet))}, []))
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    from tokenizers import decoders

    model.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=model, eos_token="</s>", pad_token="</s>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>", "<|system|>"]})
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def test_a_transcript_becomes_alternating_turns():
    text = "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke\n\nAssistant:"
    assert transcript_messages(text, HUMAN, ASSISTANT) == [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke"}]
    # two human turns in a row merge (templates want alternation); the leading newlines may be missing
    assert transcript_messages("Human: a\n\nHuman: b\n\nAssistant:", HUMAN, ASSISTANT) == [
        {"role": "user", "content": "a\n\nb"}]
    # not a transcript: plain text, or one that does not end where the answer goes
    assert transcript_messages("What is 2 + 2?", HUMAN, ASSISTANT) is None
    assert transcript_messages("\n\nHuman: a\n\nAssistant: b", HUMAN, ASSISTANT) is None


def test_chat_pairs_take_trls_layout_and_end_in_eos():
    tokenizer = byte_tokenizer()
    pair = PreferencePair("p", "\n\nHuman: Hi\n\nAssistant: Hey\n\nHuman: 2+2?\n\nAssistant:", " 4", " 5")
    tokens = tokenize_pairs([pair], tokenizer, max_length=256, max_prompt_length=128)
    assert tokenizer.decode(tokens.prompt_ids[0]) == "<|user|>Hi</s><|assistant|>Hey</s><|user|>2+2?</s><|assistant|>"
    assert tokenizer.decode(tokens.chosen_ids[0]) == "4</s>"  # the template's end of turn is the EOS
    plain = PreferencePair("q", "What is 2+2?", "4", "5")  # plain text: one user message, content as is
    tokens = tokenize_pairs([plain], tokenizer, max_length=256, max_prompt_length=128)
    assert tokenizer.decode(tokens.prompt_ids[0]) == "<|user|>What is 2+2?</s><|assistant|>"


def test_an_over_long_chat_prompt_drops_whole_turns_first_then_cuts_text():
    tokenizer = byte_tokenizer()
    system = {"role": "system", "content": "Be brief."}
    turns = [{"role": "user", "content": "first question " * 3}, {"role": "assistant", "content": "first answer"},
             {"role": "user", "content": "second question"}, {"role": "assistant", "content": "second answer"},
             {"role": "user", "content": "last?"}]
    pair = PreferencePair("long", [system, *turns], "yes", "no")
    truncation = ChatTruncation()
    tokens = tokenize_pairs([pair], tokenizer, max_length=62, max_prompt_length=52, truncation=truncation)
    prompt = tokenizer.decode(tokens.prompt_ids[0])
    # system kept, the first exchange dropped whole, the rest intact: the template's structure is never cut
    assert prompt == ("<|system|>Be brief.</s><|user|>second question</s><|assistant|>second answer</s>"
                      "<|user|>last?</s><|assistant|>")
    assert len(tokens.prompt_ids[0]) == 51  # 11 + 17 + 15 + 7 + 1 tokens
    assert truncation.as_record() == {"turns_dropped": 2, "prompts_with_turns_dropped": 1, "prompts_text_cut": 0,
                                      "examples": ["long"]}
    # one turn too long by itself: its text loses its start, its header stays
    long_question = PreferencePair("q", [{"role": "user", "content": "x" * 80 + " the question?"}], "a", "b")
    truncation = ChatTruncation()
    tokens = tokenize_pairs([long_question], tokenizer, max_length=40, max_prompt_length=30, truncation=truncation)
    prompt = tokenizer.decode(tokens.prompt_ids[0])
    assert prompt.startswith("<|user|>") and prompt.endswith(" the question?</s><|assistant|>")
    assert len(tokens.prompt_ids[0]) == 30 and truncation.prompts_text_cut == 1


def test_plain_text_prompts_keep_the_token_rule():
    """Without a chat template nothing changes: the prompt is cut from the left by tokens."""
    tokenizer = byte_tokenizer()
    tokenizer.chat_template = None
    pair = PreferencePair("p", "abcdefghij", "yes", "no")
    tokens = tokenize_pairs([pair], tokenizer, max_length=10, max_prompt_length=5)
    assert tokenizer.decode(tokens.prompt_ids[0]) == "fghij"


@pytest.mark.parametrize("bad", [{"human_marker": "\n\nUser:"}])
def test_other_markers_are_honoured(bad):
    tokenizer = byte_tokenizer()
    pair = PreferencePair("p", "\n\nUser: Hi\n\nAssistant:", " yo", " no")
    tokens = tokenize_pairs([pair], tokenizer, max_length=256, max_prompt_length=128, **bad)
    assert tokenizer.decode(tokens.prompt_ids[0]) == "<|user|>Hi</s><|assistant|>"
