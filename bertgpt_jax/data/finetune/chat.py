"""Chat templates: conversations `{"messages": [{"role", "content"}, ...]}` rendered to text the
way `transformers`' `apply_chat_template` does (a Jinja template in a sandbox, with
`messages`, `add_generation_prompt`, `bos_token`, `eos_token` and `raise_exception`), and split
into the parts a model is trained on.

`segments` marks the assistant turns by rendering the conversation prefix by prefix: the text
an assistant turn adds is what `messages[:i + 1]` renders beyond `messages[:i]` with the
generation prompt, so the marked text is exactly what the model writes when asked to continue
a prompt made by the same template. A template that does not render conversations that way
(a later turn changing earlier text) is refused for training.

The default template, used when neither `task.chat_template` nor the init tokenizer's
`tokenizer_config.json` gives one, needs no special tokens:

    {system}\\n\\nUser: {user}\\n\\nAssistant: {assistant}\\n\\n ... Assistant:
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bertgpt_jax.core.errors import ConfigError, DataError
from bertgpt_jax.data.tokenizers import Tokenizer

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}User: {{ message['content'] }}\n\n"
    "{% elif message['role'] == 'assistant' %}Assistant: {{ message['content'] }}\n\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
ASSISTANT = "assistant"
Segment = tuple[str, bool]  # (text, whether its tokens count in the loss)


def tokenizer_chat_template(directory: Path) -> str:
    """The chat template in a HuggingFace tokenizer directory's tokenizer_config.json (or its
    chat_template.jinja), else ""."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    try:
        data = json.loads((directory / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return ""
    template = data.get("chat_template") if isinstance(data, dict) else None
    return template if isinstance(template, str) else ""


def for_tokenizer(source: str, roles: Sequence[str], tokenizer: Tokenizer) -> ChatTemplate:
    """`source` compiled with these roles and the tokenizer's bos/eos spellings."""
    specials = tokenizer.specials
    bos = "" if specials.bos is None else tokenizer.piece(specials.bos)
    eos = "" if specials.eos is None else tokenizer.piece(specials.eos)
    return ChatTemplate(source, roles, bos, eos)


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


class ChatTemplate:
    """A compiled chat template and the roles a message may have."""

    def __init__(self, source: str, roles: Sequence[str], bos: str = "", eos: str = "") -> None:
        self.source, self.roles = source, tuple(roles)
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as err:
            raise ConfigError(
                f"task.chat_template is not a valid Jinja template ({err}); fix it or leave it "
                "empty for the default."
            ) from err
        self._tokens = {"bos_token": bos, "eos_token": eos}

    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool) -> str:
        return self._template.render(
            messages=list(messages), add_generation_prompt=add_generation_prompt, **self._tokens
        )

    def prompt(self, text: str) -> str:
        """A single user turn, ready for the assistant's reply (generation samples)."""
        return self.render([{"role": "user", "content": text}], add_generation_prompt=True)

    def check(self, messages: Any, where: str) -> list[dict[str, str]]:
        """The messages, or a DataError naming `where` (file:line) and the fix."""
        if not isinstance(messages, list) or not messages:
            raise DataError(f'{where}: "messages" must be a non-empty list of turns.')
        for n, message in enumerate(messages):
            ok = isinstance(message, dict) and {"role", "content"} <= set(message)
            if not ok or not all(isinstance(message[k], str) for k in ("role", "content")):
                raise DataError(
                    f'{where}: message {n} must be an object with string "role" and "content".'
                )
            if message["role"] not in self.roles:
                raise DataError(
                    f"{where}: message {n} has role {message['role']!r}, which the chat template "
                    f"does not know; use one of {', '.join(self.roles)} (task.chat_roles lists "
                    "the roles a custom template knows)."
                )
        if not any(m["role"] == ASSISTANT for m in messages):
            raise DataError(
                f"{where}: the conversation has no {ASSISTANT!r} turn, so nothing to learn; add one "
                "or drop the line."
            )
        return messages

    def segments(self, messages: Any, where: str) -> list[Segment]:
        """The rendered conversation as (text, is-assistant) parts, in order."""
        messages = self.check(messages, where)
        try:
            full = self.render(messages, add_generation_prompt=False)
            parts: list[Segment] = []
            done = 0
            for i, message in enumerate(messages):
                if message["role"] != ASSISTANT:
                    continue
                before = self.render(messages[:i], add_generation_prompt=True)
                upto = self.render(messages[: i + 1], add_generation_prompt=False)
                if not (upto.startswith(before) and full.startswith(upto) and len(before) >= done):
                    raise DataError(
                        f"{where}: the chat template does not render this conversation turn by "
                        "turn (a later turn changes earlier text), so the assistant's tokens "
                        "cannot be told apart; use a template that only appends."
                    )
                parts += [(full[done : len(before)], False), (full[len(before) : len(upto)], True)]
                done = len(upto)
        except jinja2.TemplateError as err:
            raise DataError(f"{where}: the chat template refused this conversation: {err}") from err
        return [*parts, (full[done:], False)]
