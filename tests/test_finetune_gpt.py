"""GPT fine-tuning (`bertgpt finetune --task causal-lm | sft`): the loss counts only completion
tokens, packed examples never see each other, chat templates mark the assistant's turns, a
tiny GPT learns a tiny mapping and generates it, a preempted run resumes bitwise, the export
carries the chat template, and bad input is one sentence with nothing written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from finetune_shared import run

from bertgpt_jax import load_pretrained
from bertgpt_jax.cli import main
from bertgpt_jax.core.config import DataConfig, ModelConfig
from bertgpt_jax.core.errors import DataError
from bertgpt_jax.data.embedded import write_default_corpus
from bertgpt_jax.data.finetune.chat import DEFAULT_CHAT_TEMPLATE, ChatTemplate
from bertgpt_jax.data.pretrain.gpt_examples import GptExampleBuilder, num_windows
from bertgpt_jax.data.store import StoreSplit
from bertgpt_jax.data.tokenizers import SpecialIds
from bertgpt_jax.model.gpt import Gpt
from bertgpt_jax.training import loop
from bertgpt_jax.training.finetune import finetune_config

EOS, PAD = 99, 0
# Small and fast; every run fine-tunes with these unless it says otherwise.
FAST = ["data.seq_len=32", "train.batch_size=8", "train.learning_rate=3e-3",
        "checkpoint.async_save=false", "train.log_every=5", "model.dropout_rate=0.0",
        "model.attention_dropout_rate=0.0"]  # fmt: skip


def fast(*changes: str) -> list[str]:
    """FAST with some keys changed."""
    keys = {c.split("=")[0] for c in changes}
    return [f for f in FAST if f.split("=")[0] not in keys] + list(changes)


PAIRS = {"file": "list", "string": "module", "class": "object", "function": "method",
         "value": "type", "name": "data", "line": "error", "code": "path"}  # fmt: skip


def _split(examples: list[tuple[list[int], list[int]]]) -> StoreSplit:
    """An in-memory store split of (tokens, loss mask) examples, one sentence each."""
    tokens = np.concatenate([np.array(t) for t, _ in examples]).astype(np.int32)
    mask = np.concatenate([np.array(m) for _, m in examples]).astype(np.uint8)
    offsets = np.concatenate([[0], np.cumsum([len(t) for t, _ in examples])])
    return StoreSplit(tokens, offsets, np.arange(len(examples) + 1), mask)


def test_whole_packing_weights_only_completion_tokens():
    """Hand-built: two examples share window 0, the third starts window 1; only completion
    targets and the end after a completion weigh 1, positions restart per example."""
    examples = [([10, 11, 12], [0, 0, 1]), ([20, 21], [0, 1]), ([30, 31, 32, 33], [0, 0, 1, 1])]
    config = DataConfig(seq_len=6, document_attention=True)
    builder = GptExampleBuilder(_split(examples), config, SpecialIds(eos=EOS, pad=PAD), True)
    assert builder.num_examples == 2 == num_windows(np.array([3, 2, 4]), 6, True)
    rows = builder.build(np.array([0, 1]))
    # Stream: 10 11 12 E 20 21 [E] 30 31 32 33 E: the second example's end is the position
    # windows 0 and 1 share; the third (5 positions with its end) no longer fits in window 0.
    np.testing.assert_array_equal(rows["input_ids"][0], [10, 11, 12, EOS, 20, 21])
    np.testing.assert_array_equal(rows["targets"][0], [11, 12, EOS, 20, 21, EOS])
    np.testing.assert_array_equal(rows["loss_weights"][0], [0, 1, 1, 0, 1, 1])
    np.testing.assert_array_equal(rows["segment_ids"][0], [1, 1, 1, 1, 2, 2])
    np.testing.assert_array_equal(rows["positions"][0], [0, 1, 2, 3, 0, 1])
    np.testing.assert_array_equal(rows["input_ids"][1], [EOS, 30, 31, 32, 33, EOS])
    np.testing.assert_array_equal(rows["targets"][1], [30, 31, 32, 33, EOS, PAD])
    np.testing.assert_array_equal(rows["loss_weights"][1], [0, 0, 1, 1, 1, 0])
    np.testing.assert_array_equal(rows["segment_ids"][1], [1, 2, 2, 2, 2, 2])
    np.testing.assert_array_equal(rows["positions"][1], [0, 0, 1, 2, 3, 4])


def test_an_overlong_example_keeps_its_end():
    examples = [([1, 2, 3, 4, 5, 6, 7, 8], [0, 0, 0, 0, 0, 0, 1, 1])]
    config = DataConfig(seq_len=4, document_attention=True)
    builder = GptExampleBuilder(_split(examples), config, SpecialIds(eos=EOS, pad=PAD), True)
    rows = builder.build(np.array([0]))
    assert builder.truncated == 1
    np.testing.assert_array_equal(rows["input_ids"][0], [5, 6, 7, 8])
    np.testing.assert_array_equal(rows["loss_weights"][0], [0, 1, 1, 1])


def test_packed_examples_do_not_attend_to_each_other():
    """Changing the second example leaves the first one's logits bitwise unchanged, and the
    second's logits are those it has alone."""
    config = ModelConfig(family="gpt", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                         mlp_dim=64, max_len=16, norm_position="pre", type_vocab_size=0)  # fmt: skip
    model = Gpt(config, jax.random.key(0))
    segments = jnp.array([[1, 1, 1, 1, 2, 2, 2, 0]])
    positions = jnp.array([[0, 1, 2, 3, 0, 1, 2, 0]])
    first = model(jnp.array([[5, 6, 7, 8, 9, 10, 11, 0]]), positions=positions,
                  segment_ids=segments)["logits"]  # fmt: skip
    second = model(jnp.array([[5, 6, 7, 8, 40, 41, 42, 0]]), positions=positions,
                   segment_ids=segments)["logits"]  # fmt: skip
    alone = model(jnp.array([[40, 41, 42]]), positions=jnp.array([[0, 1, 2]]),
                  segment_ids=jnp.ones((1, 3), jnp.int32))["logits"]  # fmt: skip
    np.testing.assert_array_equal(first[0, :4], second[0, :4])
    np.testing.assert_allclose(second[0, 4:7], alone[0], atol=1e-5)


def test_chat_template_marks_assistant_turns():
    template = ChatTemplate(DEFAULT_CHAT_TEMPLATE, ("system", "user", "assistant"))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "Bye now"}]  # fmt: skip
    parts = template.segments(messages, "f:1")
    assert "".join(t for t, _ in parts) == template.render(messages, False)
    assert [t for t, marked in parts if marked] == [" Hello\n\n", " Bye now\n\n"]
    assert template.prompt("Hi") == "User: Hi\n\nAssistant:"
    with pytest.raises(DataError, match=r"f:2: message 0 has role 'robot'"):
        template.segments([{"role": "robot", "content": "x"}], "f:2")
    rewriting = ChatTemplate("{{ messages | length }}{% for m in messages %}{{ m.content }}"
                             "{% endfor %}", ("user", "assistant"))  # fmt: skip
    with pytest.raises(DataError, match="does not render this conversation turn by turn"):
        rewriting.segments([{"role": "user", "content": "a"},
                            {"role": "assistant", "content": "b"}], "f:3")  # fmt: skip


@pytest.fixture(scope="module")
def gpt(tmp_path_factory) -> Path:
    """A GPT-2-like HF directory: a byte-level BPE trained here and random tiny weights."""
    path = tmp_path_factory.mktemp("gpt")
    write_default_corpus(path / "corpus")
    argv = ["tokenizer", "--input", path / "corpus", "--vocab-size", 1000, "--model-type",
            "byte-bpe", "--output", path / "gpt"]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=1000, n_embd=64, n_layer=2, n_head=4,
                                     n_positions=64, bos_token_id=999, eos_token_id=999)  # fmt: skip
    transformers.GPT2LMHeadModel(config).save_pretrained(path / "gpt", safe_serialization=True)
    return path / "gpt"


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _mapping(tmp_path: Path, chat: bool) -> tuple[Path, Path]:
    def row(a: str, b: str) -> dict:
        if chat:
            return {"messages": [{"role": "user", "content": a}, {"role": "assistant",
                                                                  "content": b}]}  # fmt: skip
        return {"prompt": f"Q: {a}\nA:", "completion": f" {b}"}

    rows = [row(a, b) for a, b in PAIRS.items()]
    return _jsonl(tmp_path / "train.jsonl", rows * 16), _jsonl(tmp_path / "val.jsonl", rows)


@pytest.mark.parametrize("chat", [False, True], ids=["prompt_completion", "chat"])
def test_tiny_gpt_learns_a_mapping_and_generates_it(gpt, tmp_path, capsys, chat):
    train, validation = _mapping(tmp_path, chat)
    work = tmp_path / "run"
    code, out, err = run(capsys, "finetune", "--task", "sft", "--init", gpt, "--train", train,
                         "--validation", validation, "--workdir", work, *FAST, "train.epochs=40",
                         'eval.prompts=["file"]' if chat else 'eval.prompts=["Q: file\\nA:"]',
                         "eval.max_new_tokens=4")  # fmt: skip
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    model = load_pretrained(work)
    completions = [f" {b}\n\n" if chat else f" {b}" for b in PAIRS.values()]
    targets = sum(len(model.tokenizer.encode(c)) + 1 for c in completions)  # and each EOS
    assert result["final"]["loss"] < 0.05 and result["final"]["tokens"] == targets
    for a, b in PAIRS.items():
        prompt = f"User: {a}\n\nAssistant:" if chat else f"Q: {a}\nA:"
        [done] = model.generate([prompt], max_new_tokens=6, temperature=0.0)
        expected = f" {b}\n\n" if chat else f" {b}"
        assert (done.text, done.stop_reason) == (expected, "eos"), (a, done)
    samples = [json.loads(line) for line in (work / "samples.jsonl").read_text().splitlines()]
    assert samples[-1]["completion"] == (" list\n\n" if chat else " list")
    exported = tmp_path / "hf"
    assert main(["export", "--workdir", str(work), "--output", str(exported)]) == 0
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    if chat:
        code, out, _ = run(capsys, "generate", "--model", exported, "--prompt", "file", "--chat",
                           "--temperature", 0, "--max-new-tokens", 4, "--json")  # fmt: skip
        assert code == 0 and json.loads(out.splitlines()[-1])["text"] == " list\n\n"
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "file"}], tokenize=False, add_generation_prompt=True
        )
        assert text == "User: file\n\nAssistant:"
    hf = transformers.GPT2LMHeadModel.from_pretrained(exported)
    ids = tokenizer("Q: file\nA: list")["input_ids"]
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits.numpy()
    np.testing.assert_allclose(theirs[0], np.asarray(model(np.array([ids]))["logits"][0]),
                               atol=1e-4)  # fmt: skip


def test_causal_lm_on_documents_lowers_held_out_perplexity(gpt, tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(12):
        (docs / f"{i}.txt").write_text("def f(x):\n    return x + 1\n" * (i + 2))
    held = _jsonl(tmp_path / "held.jsonl", [{"text": "def f(x):\n    return x + 1\n" * 3}])
    code, out, err = run(capsys, "finetune", "--task", "causal-lm", "--init", gpt, "--train",
                         docs, "--validation", held, "--workdir", tmp_path / "run", *FAST,
                         "train.epochs=3", "train.eval_every=1")  # fmt: skip
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().split(
        "\n") if "eval_perplexity" in line]  # fmt: skip
    assert rows[-1]["eval_perplexity"] < rows[0]["eval_perplexity"] / 4
    assert json.loads(out.strip().splitlines()[-1])["best"]["step"] == rows[-1]["step"]


def test_preempted_sft_resumes_bitwise(gpt, tmp_path, capsys, monkeypatch):
    train, validation = _mapping(tmp_path, chat=False)
    argv = ["finetune", "--task", "sft", "--init", gpt, "--train", train, "--validation",
            validation, *fast("train.steps=8", "train.log_every=1", "train.eval_every=4",
            "checkpoint.every_steps=4", "model.dropout_rate=0.1")]  # fmt: skip
    assert run(capsys, *argv, "--workdir", tmp_path / "whole")[0] == 0

    class StopAt4(loop.Preemption):
        def reached(self, step: int) -> bool:
            return step == 4

    monkeypatch.setattr(loop, "Preemption", StopAt4)
    assert run(capsys, *argv, "--workdir", tmp_path / "cut")[0] == 0
    monkeypatch.undo()
    assert run(capsys, *argv, "--workdir", tmp_path / "cut")[0] == 0

    def rows(name: str) -> list[str]:
        return (tmp_path / name / "metrics.jsonl").read_text().splitlines()

    def kept(name: str) -> list[dict]:
        keep = ("step", "loss", "grad_norm", "learning_rate", "eval_loss")
        return [{k: r[k] for k in keep if k in r} for r in map(json.loads, rows(name))]

    assert kept("cut") == kept("whole") and len(kept("whole")) == 10


def _bad(tmp_path: Path, name: str, rows: list[dict] | str) -> Path:
    path = tmp_path / name
    path.write_text(rows if isinstance(rows, str) else "".join(json.dumps(r) + "\n" for r in rows))
    return path


BAD = [
    ("no prompt/completion or messages", "sft", [{"question": "a", "answer": "b"}],
     r"train.jsonl:1 has neither string \"prompt\" and \"completion\" fields nor \"messages\""),
    ("a role the template does not know", "sft",
     [{"messages": [{"role": "robot", "content": "a"}, {"role": "assistant", "content": "b"}]}],
     r"train.jsonl:1: message 0 has role 'robot', which the chat template does not know"),
    ("a completion longer than the window", "sft",
     [{"prompt": "a", "completion": " list" * 40}],
     r"train.jsonl:1: its completion alone has 40 tokens, but data.seq_len=32"),
    ("a line that is not JSON", "sft", "{\"prompt\": \n",
     r"train.jsonl:1 is not valid JSON"),
    ("an empty document", "causal-lm", "  \n", r"train.jsonl holds no text"),
]  # fmt: skip


@pytest.mark.parametrize("what, task, rows, says", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_sentence_and_writes_nothing(gpt, tmp_path, capsys, what, task, rows,
                                                      says):  # fmt: skip
    train = _bad(tmp_path, "train.jsonl", rows)
    validation = _bad(tmp_path, "val.jsonl", [{"prompt": "a", "completion": " b"}])
    work = tmp_path / "run"
    code, _, err = run(capsys, "finetune", "--task", task, "--init", gpt, "--train", train,
                       "--validation", validation, "--workdir", work, *FAST, "train.epochs=1")  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search(says, err), err
    assert not work.exists()


def test_a_bert_init_is_refused(tmp_path, capsys):
    bert = tmp_path / "bert"
    bert.mkdir()
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64)  # fmt: skip
    transformers.BertForPreTraining(config).save_pretrained(bert, safe_serialization=True)
    train = _bad(tmp_path, "t.jsonl", [{"prompt": "a", "completion": " b"}])
    code, _, err = run(capsys, "finetune", "--task", "sft", "--init", bert, "--train", train,
                       "--validation", train, "--workdir", tmp_path / "run")  # fmt: skip
    assert code == 2 and "is a bert model; this fine-tuning task trains GPT decoders" in err
    assert not (tmp_path / "run").exists()


def test_overlong_examples_are_counted_before_anything_is_written(gpt, tmp_path, caplog):
    rows = [
        {"prompt": "Q: file " * 30, "completion": " list"},
        {"prompt": "Q:", "completion": " a"},
    ]
    train = _jsonl(tmp_path / "t.jsonl", rows)
    config = finetune_config("sft", str(gpt), [str(train)], [str(train)], overrides=FAST,
                             workdir=str(tmp_path / "run"))  # fmt: skip
    assert config.task.name == "sft" and config.data.path == str(tmp_path / "run" / "data")
    assert "1 of 2 train examples are longer than data.seq_len=32" in caplog.text
    assert not (tmp_path / "run").exists()


def test_windows_default_to_the_inits_positions(gpt, tmp_path):
    """The recipe's 1024-token windows shrink to a smaller init's positions (64 here)."""
    train = _jsonl(tmp_path / "t.jsonl", [{"prompt": "Q:", "completion": " a"}])
    config = finetune_config("sft", str(gpt), str(train), str(train), workdir=str(tmp_path / "r"))
    assert (config.data.seq_len, config.model.max_len) == (64, 64)
