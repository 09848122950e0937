"""The default corpus, needing no download: docstrings of the Python standard library.

Every Python installation carries its standard library as source, and its docstrings are English
prose written by many hands; `pydoc_data` adds the language reference's help topics.
`write_default_corpus` reads the sources as text (nothing is imported or executed), keeps the
prose paragraphs (doctest lines, indented code and reST directives are dropped), splits them into
sentences with `sources.split_sentences`, and writes BERT-format files: one sentence per line,
one help topic or one module per document, a blank line between documents. About 1.5 MB of text,
the same for a given Python version.

`prepare_default` runs the whole data path on it — corpus, tokenizer, store — and is
idempotent, for `make demo` and for tests that need a real, small store.
"""

from __future__ import annotations

import inspect
import re
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

from bertgpt_jax.data.sources import TextOptions, fingerprint_files, iter_sentences, split_sentences
from bertgpt_jax.data.store import prepare_store
from bertgpt_jax.data.tokenizers.sentencepiece import train_tokenizer

MAX_CHARS = 1_500_000
FILE_CHARS = 250_000
# Packages whose docstrings are mostly not prose, or that are tests and demos.
_TRIPLE_QUOTED = re.compile(r"(?s)(\"\"\"|\'\'\')(.*?)\1")
_SKIP = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "site-packages", "__pycache__"}


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        path for path in root.rglob("*.py") if not _SKIP.intersection(path.relative_to(root).parts)
    )


def _prose(docstring: str) -> str:
    """The prose paragraphs of a docstring, blank-line separated."""
    paragraphs = []
    for paragraph in docstring.split("\n\n"):
        lines = [line for line in paragraph.splitlines() if line.strip()]
        if not lines or any(line.lstrip().startswith((">>>", "...", ":", "..")) for line in lines):
            continue
        if len({len(line) - len(line.lstrip()) for line in lines[1:]}) > 1:
            continue  # ragged indentation: a code block or a table
        text = " ".join(line.strip() for line in lines)
        letters = sum(c.isalpha() or c.isspace() for c in text)
        if len(text) >= 40 and letters >= 0.85 * len(text):
            paragraphs.append(text)
    return "\n\n".join(paragraphs)


def _file_document(path: Path) -> list[str]:
    """The sentences of all triple-quoted strings of one module: a regular expression finds
    them about ten times faster than `ast` would, and the prose filter drops the few that are
    code templates rather than docstrings."""
    source = path.read_text(encoding="utf-8", errors="replace")
    docstrings = (inspect.cleandoc(match.group(2)) for match in _TRIPLE_QUOTED.finditer(source))
    return split_sentences("\n\n".join(_prose(text) for text in docstrings))


def _documents() -> Iterator[list[str]]:
    """The help topics of the language reference first (long prose), then one document per
    standard-library module."""
    try:
        from pydoc_data import topics
    except ImportError:  # some distributions package pydoc_data separately
        help_topics: dict[str, str] = {}
    else:
        help_topics = topics.topics
    for name in sorted(help_topics):
        yield split_sentences(_prose(help_topics[name]))
    for path in _stdlib_files():
        yield _file_document(path)


def write_default_corpus(out_dir: str | Path) -> list[Path]:
    """Writes the standard-library docstring corpus as BERT-format files; returns their paths.

    Files whose content is unchanged are not rewritten.
    """
    return _write_documents(_documents(), Path(out_dir), "stdlib_docstrings")


def write_docstring_corpus(files: Iterable[Path], out_dir: str | Path, name: str) -> list[Path]:
    """The same corpus made from other Python sources (one document per module), e.g. an
    installed package's, as `{name}_docstrings_NN.txt` files: another body of local text."""
    return _write_documents(map(_file_document, files), Path(out_dir), f"{name}_docstrings")


def _write_documents(documents: Iterable[list[str]], out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    chunks: list[str] = []
    current: list[str] = []
    size = total = 0
    for document in documents:
        if not document:
            continue
        text = "\n".join(document) + "\n"
        current.append(text)
        size += len(text)
        total += len(text)
        if size >= FILE_CHARS:
            chunks.append("\n".join(current))
            current, size = [], 0
        if total >= MAX_CHARS:
            break
    if current:
        chunks.append("\n".join(current))
    paths = []
    for number, chunk in enumerate(chunks):
        path = out_dir / f"{stem}_{number:02d}.txt"
        if not path.exists() or path.read_text(encoding="utf-8") != chunk:
            path.write_text(chunk, encoding="utf-8")
        paths.append(path)
    return paths


def prepare_default(workdir: str | Path, vocab_size: int = 1024) -> Path:
    """Corpus -> tokenizer -> store under `workdir`; returns the store directory (data.path).

    Each step is skipped when its output is already up to date, so calling this again is cheap.
    """
    workdir = Path(workdir)
    files = write_default_corpus(workdir / "corpus")
    options = TextOptions(format="bert")
    train_tokenizer(
        iter_sentences(files, options),
        workdir / "tokenizer",
        vocab_size,
        inputs_fingerprint=fingerprint_files(files, options),
        description="the default corpus",
    )
    return prepare_store(
        workdir / "store",
        workdir / "tokenizer",
        inputs=files,
        text_options=options,
        validation_fraction=0.05,
        overwrite=True,
    )
