"""Pairs through a tokenizer's chat template: transcripts as turns, TRL's token layout, truncation by turns.

A tokenizer with a chat template (an instruct model) sees every prompt as chat messages:
- a conversational prompt as it is;
- an HH-style transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nHuman: ...\\n\\nAssistant:", the markers
  `data.human_marker` / `data.assistant_marker`) as alternating user/assistant messages, its final
  assistant marker being where the completion goes (`transcript_messages`); contents are stripped of the
  spaces and newlines around the markers, and so are the completions, as TRL's conversational HH sets have them;
- any other text as one user message.

Tokens follow TRL's conversational format (DPOTrainer's tokenisation): the prompt is the template of the
messages with the generation prompt; a completion is what the template of prompt + {assistant: completion}
adds to it, from the first token where the two differ (so whatever the template writes after the
answer, e.g. "<|im_end|>\\n", is part of the completion). One deviation: a template that ends the
assistant turn without the EOS token gets it appended, so every completion ends in EOS as in
ablate's plain-text layout.

Truncation (`max_length`, `max_prompt_length`): an over-long chat prompt drops whole turns first, the
earliest user/assistant exchange at a time, keeping a system message and the last user turn; if the
last turn alone is still too long, the start of its text is cut. The template's structure (BOS, role
headers, generation prompt) is never cut. Completions are then cut from the right to fit, as for plain text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ROLES = {"human": "user", "assistant": "assistant"}


@dataclass
class ChatTruncation:
    """What chat-aware truncation did, for the data record."""

    turns_dropped: int = 0  # whole messages dropped from the start of prompts
    prompts_with_turns_dropped: int = 0
    prompts_text_cut: int = 0  # prompts whose earliest kept turn had the start of its text cut
    examples: list[str] = field(default_factory=list)  # a few pair ids

    def as_record(self) -> dict:
        return {"turns_dropped": self.turns_dropped, "prompts_with_turns_dropped": self.prompts_with_turns_dropped,
                "prompts_text_cut": self.prompts_text_cut, "examples": self.examples[:5]}


def transcript_messages(text: str, human_marker: str, assistant_marker: str) -> list[dict] | None:
    """An HH-style transcript prompt as chat messages ending with a user turn; None when `text` is not one
    (it must start with the human marker and end with the assistant marker). Consecutive turns of one
    role are merged (templates want alternation)."""
    body = text.strip()
    human, assistant = human_marker.strip(), assistant_marker.strip()
    if not (body.startswith(human) and body.endswith(assistant)):
        return None
    # split at a marker that starts the text or follows a line break, as HH writes them
    pattern = re.compile(rf"(?:^|\n+)({re.escape(human)}|{re.escape(assistant)})")
    pieces = pattern.split(body)  # ['', marker, content, marker, content, ...]
    messages: list[dict] = []
    for marker, content in zip(pieces[1::2], pieces[2::2], strict=True):
        role = "user" if marker == human else "assistant"
        content = content.strip()
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n\n" + content
        else:
            messages.append({"role": role, "content": content})
    if not messages or messages[-1] != {"role": "assistant", "content": ""} or messages[0]["role"] != "user":
        return None
    return messages[:-1]


def as_messages(prompt: str | list[dict], human_marker: str, assistant_marker: str) -> tuple[list[dict], bool]:
    """(chat messages of a prompt, whether it was a text transcript)."""
    if not isinstance(prompt, str):
        return prompt, False
    turns = transcript_messages(prompt, human_marker, assistant_marker)
    return (turns, True) if turns is not None else ([{"role": "user", "content": prompt}], False)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class ChatTokens:
    """Tokenises pairs through `tokenizer`'s chat template (TRL's conversational layout)."""

    def __init__(self, tokenizer, ids, eos: int):
        self.tokenizer, self.ids, self.eos = tokenizer, ids, eos  # ids(texts) -> token lists, no special tokens

    def render(self, conversations: list[list[dict]], generation_prompt: bool) -> list[list[int]]:
        texts = self.tokenizer.apply_chat_template(conversations, tokenize=False,
                                                   add_generation_prompt=generation_prompt)
        return self.ids(texts)  # the template writes BOS itself

    def pairs(self, prompts: list[list[dict]], chosen: list[str], rejected: list[str]):
        """[(prompt ids, chosen ids, rejected ids)] for each pair."""
        p_ids = self.render(prompts, True)
        c_ids = self.render([m + [{"role": "assistant", "content": c}] for m, c in zip(prompts, chosen, strict=True)],
                            False)
        r_ids = self.render([m + [{"role": "assistant", "content": r}] for m, r in
                             zip(prompts, rejected, strict=True)], False)
        out = []
        for p, c, r in zip(p_ids, c_ids, r_ids, strict=True):
            cut = min(common_prefix(p, c), common_prefix(p, r))
            out.append((p[:cut], self._ended(c[cut:]), self._ended(r[cut:])))
        return out

    def _ended(self, completion: list[int]) -> list[int]:
        return completion if self.eos in completion else completion + [self.eos]

    def fit_prompt(self, messages: list[dict], budget: int, tally: ChatTruncation, pair_id: str) -> list[dict]:
        """`messages` with the earliest turns dropped, then the earliest kept turn's text cut, until the
        prompt's tokens fit `budget`; a system message and the last user turn are kept."""
        def length(m):
            return len(self.render([m], True)[0])

        if length(messages) <= budget:
            return messages
        system = messages[:1] if messages[0]["role"] == "system" else []
        turns = messages[len(system):]
        dropped = 0
        while len(turns) > 1 and length(system + turns) > budget:
            step = 2 if len(turns) > 2 and turns[1]["role"] != turns[0]["role"] else 1  # one exchange at a time
            turns, dropped = turns[step:], dropped + step
            if turns[0]["role"] != "user" and len(turns) > 1:  # a prompt's turns start with the user
                turns, dropped = turns[1:], dropped + 1
        if dropped:
            tally.turns_dropped += dropped
            tally.prompts_with_turns_dropped += 1
        kept = system + turns
        if length(kept) > budget:  # one turn too long by itself: keep the end of its text (the question)
            first = len(system)
            text = kept[first]["content"]
            low, high = 0, len(text)  # the fewest leading characters to cut
            while low < high:
                mid = (low + high) // 2
                trial = kept[:first] + [{**kept[first], "content": text[mid:]}] + kept[first + 1:]
                if length(trial) <= budget:
                    high = mid
                else:
                    low = mid + 1
            kept = kept[:first] + [{**kept[first], "content": text[low:]}] + kept[first + 1:]
            tally.prompts_text_cut += 1
        if len(tally.examples) < 5:
            tally.examples.append(pair_id)
        return kept
