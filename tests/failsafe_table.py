"""The fail-safe table: bad inputs and faults as a new user meets them, one row each, run by
tests/test_failsafe.py. A row is (group, what the user did, setup, exit status, what the last
stderr line must say, a regular expression). `setup(env)` builds the row's inputs under
`env.tmp` and returns the command line; `env` also names the shared store, tokenizer and
workdirs, which no row may change.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

from test_data_shared import store_of

from bertgpt_jax.cli import main

ROOT = Path(__file__).resolve().parent.parent
BERT = str(ROOT / "configs/bert_tiny.yaml")
SMALL = [
    "train.batch_size=8",
    "data.seq_len=32",
    "train.log_every=1",
    "checkpoint.every_steps=1",
    "checkpoint.async_save=false",
    "train.warmup_steps=0",
]
TEXT = "A first sentence of prose.\nAnd a second one, which follows it.\n\nA new document here.\n"
WORDS = "".join(f"word{i} and more text {i}\n" for i in range(300))  # enough for 80 pieces


@dataclasses.dataclass
class Env:
    """What a row can point at: its own empty directory, and the shared, watched fixtures."""

    tmp: Path
    store: Path
    tokenizer: Path
    trained: Path  # a 2-step BERT workdir, checkpoints 1 and 2
    poisoned: Path  # the same plus a step 3 of NaN weights, as an unguarded version saved it

    def train(self, *overrides: str, workdir: str | Path | None = None) -> list[str]:
        """`bertgpt train` of the tiny BERT on the shared store; a row's own value wins."""
        run = str(workdir or self.tmp / "run")
        given = dict(o.split("=", 1) for o in [*SMALL, f"data.path={self.store}"])
        given.update(o.split("=", 1) for o in overrides if "=" in o)
        bare = [o for o in overrides if "=" not in o]
        return ["train", "--config", BERT, "--workdir", run, *map("=".join, given.items()), *bare]

    def file(self, name: str, text: str = TEXT) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def copy(self, source: Path, name: str) -> Path:
        return Path(shutil.copytree(source, self.tmp / name))

    def mine(self) -> Path:
        """A folder of the user's own files."""
        self.file("mine/notes.txt", "my own notes")
        return self.tmp / "mine"

    def tokenize(self, output: str | Path, vocab: int = 64, text: str = TEXT) -> list[str]:
        corpus = self.file("c.txt", text)
        return ["tokenizer", "--input", str(corpus), "--vocab-size", str(vocab), "--output",
                str(output)]  # fmt: skip

    def prepare(self, output: str | Path, *extra: str) -> list[str]:
        corpus = self.file("corpus.txt")
        return ["prepare", "--input", str(corpus), "--tokenizer", str(self.tokenizer), "--output",
                str(output), *extra]  # fmt: skip

    def export(self, workdir: Path, output: str | Path | None = None) -> list[str]:
        return ["export", "--workdir", str(workdir), "--output", str(output or self.tmp / "hf")]


Setup = Callable[[Env], list[str]]


def _yaml(text: str) -> Setup:
    return lambda e: ["train", "--config", str(e.file("c.yaml", text)), "--workdir",
                      str(e.tmp / "run")]  # fmt: skip


def _truncated_store(e: Env) -> list[str]:
    store = e.copy(e.store, "store")
    tokens = store / "train" / "tokens.bin"
    tokens.write_bytes(tokens.read_bytes()[:100])
    return e.train(f"data.path={store}")


def other_tokenizer(e: Env) -> Path:
    out = e.tmp / "other_tok"
    assert main(e.tokenize(out, 80, WORDS)) == 0
    return out


def _replaced_tokenizer_copy(e: Env) -> list[str]:
    store = e.copy(e.store, "store")
    (store / "tokenizer.model").write_bytes((other_tokenizer(e) / "tokenizer.model").read_bytes())
    return e.train(f"data.path={store}")


def _no_validation_store(e: Env) -> list[str]:
    store = store_of((("One sentence here.", "Another sentence."),) * 4, 0.0)
    return e.train(f"data.path={store}", "train.eval_every=1")


def existing_tokenizer(e: Env) -> list[str]:
    return e.tokenize(e.copy(e.tokenizer, "tok"), 80, WORDS)


def damage(step_dir: Path) -> None:
    """Garbage in every array data file of a checkpoint (the largest one alone may hold only
    optimizer moments, which a parameter read never touches)."""
    for file in (step_dir / "state").rglob("*"):
        if file.is_file() and file.parent.name == "d":
            file.write_bytes(b"garbage")


def _damaged_everywhere(e: Env) -> list[str]:
    work = e.copy(e.trained, "w")
    for step in (1, 2):
        damage(work / "checkpoints" / str(step))
    return e.export(work)


def _finetune(e: Env, task: str, train: str, validation: str | None = None,
              suffix: str = ".csv") -> list[str]:  # fmt: skip
    """`bertgpt finetune` from the trained BERT workdir on files of these contents."""
    first = e.file(f"train{suffix}", train)
    second = e.file(f"dev{suffix}", validation) if validation is not None else first
    return ["finetune", "--task", task, "--init", str(e.trained), "--train", str(first),
            "--validation", str(second), "--workdir", str(e.tmp / "ft")]  # fmt: skip


LABELLED = "text,label\nthe first one,a\nthe second one,b\n"


# fmt: off
ROWS: list[tuple[str, str, Setup, int, str]] = [
    ("config", "missing file", lambda e: ["train", "--config", str(e.tmp / "no.yaml"),
        "--workdir", str(e.tmp / "r")], 2, r"no.yaml' does not exist"),
    ("config", "YAML is a list", _yaml("- model\n- train\n"), 2,
        r"must be a mapping .* not a list"),
    ("config", "empty YAML", _yaml(""), 2, r"c.yaml' is empty"),
    ("config", "invalid YAML", _yaml("model: [1,\n"), 2, r"c.yaml' is not valid YAML"),
    ("config", "key given twice", _yaml("train:\n  steps: 1\n  steps: 2\n"), 2,
        r"'steps' is given twice"),
    ("config", "config is a directory", lambda e: ["train", "--config", str(e.tmp), "--workdir",
        str(e.tmp / "r")], 2, r"is a directory"),
    ("config", "unknown key", lambda e: e.train("train.stpes=3"), 2,
        r"unknown config key 'train.stpes'"),
    ("config", "wrong type", lambda e: e.train("train.steps=abc"), 2,
        r"train.steps='abc' is not valid"),
    ("config", "override without =", lambda e: e.train("train.steps"), 2,
        r"'train.steps' must look like"),
    ("config", "negative learning rate", lambda e: e.train("train.learning_rate=-1e-3"), 2,
        r"train.learning_rate=-0.001 must be a finite positive number"),
    ("config", "NaN learning rate", lambda e: e.train("train.learning_rate=.nan"), 2,
        r"train.learning_rate=nan must be"),
    ("config", "learning rate beyond float32", lambda e: e.train("train.learning_rate=1e39"), 2,
        r"train.learning_rate=1e\+39 must be"),
    ("config", "b2 of 1", lambda e: e.train("train.b2=1.0"), 2, r"train.b2=1.0 must lie in"),
    ("config", "heads do not divide width", lambda e: e.train("model.num_heads=5"), 2,
        r"model.hidden_size must be divisible"),
    ("config", "seq_len beyond max_len", lambda e: e.train("data.seq_len=4096"), 2,
        r"data.seq_len must not exceed"),
    ("mesh", "batch does not divide over 8 devices", lambda e: e.train("train.batch_size=12"), 2,
        r"train.batch_size=12 does not divide over the 8 batch shards .* train.batch_size=16"),
    ("mesh", "mesh does not fit the devices", lambda e: e.train("mesh.data=3"), 2, r"mesh"),
    ("mesh", "two -1 mesh axes", lambda e: e.train("mesh.fsdp=-1"), 2, r"at most one of mesh"),
    ("mesh", "bench batch does not divide", lambda e: ["bench", "--config", BERT,
        "train.batch_size=4"], 2, r"bertgpt bench: .*train.batch_size=4"),
    ("workdir", "workdir is a file", lambda e: e.train(workdir=e.file("run")), 2,
        r"--workdir .*run is a file"),
    ("workdir", "workdir under a file", lambda e: e.train(workdir=e.file("f") / "run"), 2,
        r"cannot be created: .*f is a file"),
    ("workdir", "read-only file system", lambda e: e.train(workdir="/proc/bertgpt-run"), 2,
        r"--workdir /proc/bertgpt-run cannot be written"),
    ("workdir", "checkpoints is a file", lambda e: (e.file("run/checkpoints"), e.train())[1], 2,
        r"checkpoints is a file"),
    ("workdir", "--step that was never saved", lambda e: [*e.train(workdir=e.trained), "--step",
        "9"], 2, r"no committed checkpoint at step 9"),
    ("data", "data.path empty", lambda e: e.train("data.path="), 2, r"data.path is empty"),
    ("data", "data.path missing", lambda e: e.train(f"data.path={e.tmp / 'nope'}"), 2,
        r"data.path=.*nope does not exist"),
    ("data", "data.path is raw text", lambda e: e.train(f"data.path={e.file('t.txt')}"), 2,
        r"t.txt is a file, not a prepared store; .*--input .*t.txt"),
    ("data", "data.path is a text folder", lambda e: (e.file("texts/a.txt"),
        e.train(f"data.path={e.tmp / 'texts'}"))[1], 2,
        r"texts is a directory but not a prepared store.*--output .*texts-store"),
    ("store", "truncated store array", _truncated_store, 2,
        r"tokens.bin is missing or has the wrong size"),
    ("store", "vocabulary larger than the model", lambda e: e.train("model.vocab_size=512"), 2,
        r"1024 pieces but model.vocab_size=512"),
    ("store", "data.tokenizer is another", lambda e: e.train(
        f"data.tokenizer={other_tokenizer(e)}"), 2, r"another tokenizer than data.tokenizer="),
    ("store", "store tokenizer copy replaced", _replaced_tokenizer_copy, 2,
        r"does not match its manifest"),
    ("store", "no validation split for eval_every", _no_validation_store, 2,
        r"has no validation documents"),
    ("tokenizer", "--output is a file", lambda e: e.tokenize(e.file("out")), 2,
        r"tokenizer --output .*out is a file"),
    ("tokenizer", "existing tokenizer without --overwrite", existing_tokenizer, 2,
        r"already holds a tokenizer; pass --overwrite"),
    ("tokenizer", "foreign files even with --overwrite", lambda e: [*e.tokenize(e.mine()),
        "--overwrite"], 2, r"holds notes.txt, not a tokenizer written by"),
    ("tokenizer", "WordPiece into foreign files", lambda e: [*e.tokenize(e.mine(), 200),
        "--model-type", "wordpiece", "--overwrite"], 2, r"holds notes.txt, not a tokenizer"),
    ("tokenizer", "vocabulary too small for the characters", lambda e: e.tokenize(e.tmp / "t", 20,
        TEXT * 3), 2, r"raise --vocab-size or lower --character-coverage"),
    ("tokenizer", "vocabulary too large for the text", lambda e: e.tokenize(e.tmp / "t", 5000), 2,
        r"lower --vocab-size or give more text"),
    ("tokenizer", "--from-model missing", lambda e: ["tokenizer", "--from-model",
        str(e.tmp / "x.model"), "--output", str(e.tmp / "t")], 2, r"x.model does not exist"),
    ("tokenizer", "--output on a read-only file system", lambda e: e.tokenize("/proc/bertgpt-tok"),
        2, r"tokenizer --output /proc/bertgpt-tok cannot be written"),
    ("prepare", "--overwrite over a folder that is not a store", lambda e: e.prepare(e.mine(),
        "--overwrite"), 2, r"is not a prepared store: it holds notes.txt"),
    ("prepare", "--output is a file", lambda e: e.prepare(e.file("out")), 2,
        r"output .*out is a file"),
    ("prepare", "another store without --overwrite", lambda e: e.prepare(e.copy(e.store, "s")), 2,
        r"holds something else .*--overwrite"),
    ("prepare", "--input missing", lambda e: ["prepare", "--input", str(e.tmp / "none.txt"),
        "--tokenizer", str(e.tokenizer), "--output", str(e.tmp / "s")], 2, r"none.txt"),
    ("prepare", "--output on a read-only file system", lambda e: e.prepare("/proc/bertgpt-store"),
        2, r"prepare --output /proc/bertgpt-store cannot be written"),
    ("checkpoints", "export of non-finite weights", lambda e: e.export(e.poisoned), 2,
        r"checkpoint step 3 .* holds non-finite weights .*--step \(steps: 1, 2\)"),
    ("checkpoints", "resume from a non-finite step", lambda e: [*e.train("train.steps=4",
        workdir=e.poisoned), "--step", "3"], 2,
        r"checkpoint step 3 .* cannot be read .*non-finite"),
    ("checkpoints", "all checkpoints damaged", _damaged_everywhere, 2,
        r"none of the checkpoints in .* can be read"),
    ("checkpoints", "resume with another architecture", lambda e: e.train("model.hidden_size=128",
        workdir=e.trained), 2, r"different model: model.hidden_size"),
    ("checkpoints", "export into a non-empty folder", lambda e: e.export(e.trained, e.mine()), 2,
        r"mine already exists and is not empty"),
    ("checkpoints", "export --step never saved", lambda e: [*e.export(e.trained), "--step", "99"],
        2, r"no committed checkpoint at step 99"),
    ("checkpoints", "export --output under a file", lambda e: e.export(e.trained,
        e.file("f") / "hf"), 2, r"export --output .*hf cannot be created: .*f is a file"),
    ("cli", "eval of a missing workdir", lambda e: ["eval", "--workdir", str(e.tmp / "gone")], 2,
        r"--workdir .*gone does not exist; pass the --workdir of a `bertgpt train` run"),
    ("cli", "eval of a folder that is no workdir", lambda e: ["eval", "--workdir",
        str(e.mine())], 2, r"mine has no config.yaml"),
    ("cli", "export of a missing workdir", lambda e: e.export(e.tmp / "gone"), 2,
        r"workdir .*gone does not exist"),
    ("cli", "unknown command", lambda e: ["trian"], 2, r"invalid choice: 'trian'"),
    ("finetune", "unknown task", lambda e: _finetune(e, "sentiment", LABELLED), 2,
        r"--task 'sentiment' is not a fine-tuning task; use one of classification"),
    ("finetune", "no label column", lambda e: _finetune(e, "classification",
        "text,score\nthe first one,1\n"), 2, r"train.csv line 2 has no column 'label' \(it has text, score\)"),
    ("finetune", "a validation label training never had", lambda e: _finetune(e,
        "classification", LABELLED, "text,label\nthe third one,c\n"), 2, r"dev.csv.*'c'"),
    ("finetune", "an empty training file", lambda e: _finetune(e, "classification", ""), 2,
        r"train.csv is empty"),
    ("finetune", "two training files for a BERT task", lambda e: [*_finetune(e, "classification",
        LABELLED)[:6], str(e.file("more.csv", LABELLED)), *_finetune(e, "classification",
        LABELLED)[6:]], 2, r"task classification reads one --train file, not 2"),
    ("finetune", "sft from a BERT init", lambda e: _finetune(e, "sft",
        '{"prompt": "a", "completion": " b"}\n', suffix=".jsonl"), 2,
        r"is a bert model; this fine-tuning task trains GPT decoders"),
    ("generate", "generate with a BERT model", lambda e: ["generate", "--model", str(e.trained),
        "--prompt", "hello"], 2, r"generate needs a GPT \(causal\) model"),
    ("generate", "--chat with a model without a template", lambda e: ["generate", "--model",
        str(e.trained), "--prompt", "hello", "--chat"], 2, r"--chat needs a chat template"),
    ("generate", "fill-mask without [MASK]", lambda e: ["fill-mask", "--model", str(e.trained),
        "no mask in this text"], 2, r"\[MASK\]"),
    ("generate", "--prompt-file missing", lambda e: ["generate", "--model", str(e.trained),
        "--prompt-file", str(e.tmp / "none.txt")], 2, r"--prompt-file .*none.txt does not exist"),
]
# fmt: on
