"""`bertgpt generate`: continue prompts with a GPT model (see generation/ and
`PretrainedModel.generate`).

    bertgpt generate --model PATH --prompt TEXT [--prompt TEXT ...] | --prompt-file FILE
        [--max-new-tokens N --temperature T --top-k K --top-p P --min-p M --seed S
         --stop STRING ... --chat --json]

PATH is a HuggingFace directory or a training workdir. The text of a single prompt streams to
the terminal as it is produced; several prompts print when done; --json prints one object per
prompt per line (prompt, ids, text, logprobs, stop_reason). --chat renders each prompt as one
user turn through the model's chat template (an sft run's, or its export's
tokenizer_config.json). Bad requests exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bertgpt_jax.core.errors import ConfigError


def _prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompt_file:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise ConfigError(f"--prompt-file {path} does not exist.")
        prompts += [line for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ConfigError("give at least one --prompt TEXT or a --prompt-file FILE.")
    return prompts


def _chat_template(model_path: str) -> str:
    """The chat template of an sft workdir (its config) or an export (tokenizer_config.json)."""
    from bertgpt_jax.core.config import load_config
    from bertgpt_jax.data.finetune.chat import tokenizer_chat_template

    path = Path(model_path)
    template = tokenizer_chat_template(path) if path.is_dir() else ""
    if not template and (path / "config.yaml").is_file():
        template = load_config(path / "config.yaml").task.chat_template
    if not template:
        raise ConfigError(
            f"--chat needs a chat template, but {model_path} has none (only an sft run on "
            "conversations stores one); leave --chat out to continue the prompts as text."
        )
    return template


def _generate(args: argparse.Namespace) -> int:
    prompts = _prompts(args)
    from bertgpt_jax.data.finetune.chat import ChatTemplate
    from bertgpt_jax.pretrained.load import load_pretrained

    texts = prompts
    if args.chat:
        template = ChatTemplate(_chat_template(args.model), ("user",))
        texts = [template.prompt(p) for p in prompts]
    model = load_pretrained(args.model)
    stream = len(prompts) == 1 and not args.json

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    completions = model.generate(
        texts,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        seed=args.seed,
        stop=args.stop,
        on_text=show if stream else None,
    )
    if stream:
        print()
    for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        if args.json:
            print(json.dumps({"prompt": prompt, **completion.to_json()}))
        elif not stream:
            print(f"[{i}] {prompt} | {completion.text}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="continue prompts with a GPT model")
    p.add_argument("--model", required=True, help="HuggingFace directory or training workdir")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--prompt-file", help="a file with one prompt per line")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=1.0, help="0 means greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 turns it off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 turns it off")
    p.add_argument("--min-p", type=float, default=0.0, help="0 turns it off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", help="a stop string (repeatable)")
    p.add_argument("--chat", action="store_true", help="each prompt is a user turn of a chat")
    p.add_argument("--json", action="store_true", help="one JSON object per prompt")
    p.set_defaults(func=_generate)
