"""Keep secrets out of every file ablate writes (docs/ARCHITECTURE.md §9): API keys and tokens become `***`.

ablate never reads a secret itself; W&B and the Hugging Face hub read theirs from the environment
or ~/.netrc. A secret can still reach a file through text ablate records, such as the command
line in sweep.json or an error message, so that text passes through `redact` first.
"""

from __future__ import annotations

import os
import re

# Environment variables whose values are credentials, by name.
SECRET_NAME = re.compile(r"(API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$", re.IGNORECASE)
# `NAME=value`, `name: value` or `--name value` where the name ends in a secret's word (HF_TOKEN=,
# --wandb-api-key ...), not merely contains one (`chosen_tokens=` is not a secret).
_WORD = r"[\w.-]*(?:api[_-]?key|token|secret|password|passwd)"
_VALUE = r"(?P<value>\"[^\"]*\"|'[^']*'|[^\s'\",\]]+)"
SECRET_ASSIGNMENTS = (
    re.compile(rf"(?P<name>{_WORD})(?P<sep>\s*[=:]\s*){_VALUE}", re.IGNORECASE),
    re.compile(rf"(?P<name>--{_WORD})(?P<sep>\s+){_VALUE}", re.IGNORECASE),
)
MASK = "***"


def secret_values() -> list[str]:
    """Values of the secret-named environment variables (WANDB_API_KEY, HF_TOKEN, ...), longest first."""
    values = {v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= 8}
    return sorted(values, key=len, reverse=True)


def redact(text: str) -> str:
    """`text` with every secret-looking assignment and every secret environment value masked."""
    for value in secret_values():
        text = text.replace(value, MASK)
    for pattern in SECRET_ASSIGNMENTS:
        text = pattern.sub(lambda m: f"{m['name']}{m['sep']}{MASK}", text)
    return text
