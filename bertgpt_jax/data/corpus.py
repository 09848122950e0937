"""Corpus ingestion through tensorflow-datasets, without TensorFlow.

Two ways in, one way out:

* `build_local_tfds` turns local text files (see `sources.py` for the formats) into a TFDS
  dataset, `bertgpt_local_text`, stored as array_record: one example per document, its sentences
  joined by newlines in the ``text`` feature, the file it came from in ``source``.
* a named TFDS dataset the user already has in a data_dir, e.g. ``wikipedia/20230601.en:train``,
  with a configurable text feature; its free text is split into sentences by the rule in
  `sources.split_sentences`.

Both are read by `DocumentSource` through `tfds.data_source`, which gives random access to
array_record files with no TensorFlow installed. What does not work without TensorFlow: datasets
stored as tfrecord (most datasets prepared before TFDS 4.9) cannot be read here — rebuild or
convert them to array_record with a TensorFlow installation (`tfds build --file_format
array_record`, or `tfds convert_format`); `DocumentSource` says so in its error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import tensorflow_datasets as tfds
from etils import epath

from bertgpt_jax.core.errors import DataError
from bertgpt_jax.data.sources import TextOptions, read_documents, split_sentences

LOCAL_DATASET = "bertgpt_local_text"
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


class BertgptLocalText(tfds.core.GeneratorBasedBuilder):
    """Local text files as a TFDS dataset: one example per document, one sentence per line."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Documents of local text files, one sentence per line."}

    def __init__(
        self, *, files: Sequence[Path] = (), options: TextOptions | None = None, **kwargs: Any
    ) -> None:
        self._files = list(files)
        self._options = options or TextOptions()
        super().__init__(**kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> Any:
        # TFDS 4.9.10 finds a builder's source through `importlib_resources`, a backport it only
        # declares for Python < 3.9 but imports on every version; naming the file directly
        # avoids that import (and the dependency).
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict(
            {"text": tfds.features.Text(), "source": tfds.features.Text()}
        )
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
        del dl_manager  # local files only: nothing to download
        return {"train": self._generate_examples()}

    def _generate_examples(self) -> Any:
        for file_index, path in enumerate(self._files):
            for doc_index, document in enumerate(read_documents(path, self._options)):
                key = f"{file_index:06d}/{doc_index:09d}"
                yield key, {"text": "\n".join(document), "source": str(path)}


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
    """A TFDS split to read: ``name`` may carry a config and a version (``wiki/en:1.0.0``)."""

    name: str
    split: str = "train"
    data_dir: str | None = None
    text_feature: str = "text"


def parse_tfds_spec(text: str, data_dir: str | None = None, text_feature: str = "text") -> TfdsSpec:
    """``name[/config][:version][:split]`` -> TfdsSpec; the split defaults to train."""
    parts = text.split(":")
    name, split = parts[0], "train"
    for part in parts[1:]:
        if _VERSION.match(part):
            name = f"{name}:{part}"
        elif part:
            split = part
    if not name:
        raise DataError(f"--tfds {text!r} names no dataset; use NAME[/CONFIG][:SPLIT].")
    return TfdsSpec(name=name, split=split, data_dir=data_dir, text_feature=text_feature)


def _quiet_tfds() -> None:
    tfds.disable_progress_bar()
    logging.getLogger("absl").setLevel(logging.WARNING)


def build_local_tfds(files: Sequence[Path], options: TextOptions, data_dir: Path) -> TfdsSpec:
    """Builds the array_record dataset of `files` under `data_dir`; bad files raise DataError."""
    _quiet_tfds()
    builder = BertgptLocalText(
        files=files, options=options, data_dir=str(data_dir), file_format="array_record"
    )
    # TFDS prints its progress to stdout, which belongs to the command's own output.
    with contextlib.redirect_stdout(io.StringIO()):
        builder.download_and_prepare()
    return TfdsSpec(name=LOCAL_DATASET, split="train", data_dir=str(data_dir))


def _feature(example: dict[str, Any], path: str) -> Any:
    value: Any = example
    for key in path.split("/"):
        value = value[key]
    return value


class DocumentSource:
    """Random access to the documents (lists of sentences) of one TFDS split."""

    def __init__(self, spec: TfdsSpec) -> None:
        _quiet_tfds()
        self.spec = spec
        where = f"in {spec.data_dir}" if spec.data_dir else "in the default TFDS data_dir"
        try:
            builder = tfds.builder(spec.name, data_dir=spec.data_dir)
            info = builder.info
            # A registered (catalog) builder constructs fine with no data on disk.
            if not (epath.Path(builder.data_dir) / "dataset_info.json").exists():
                raise FileNotFoundError(builder.data_dir)
        except Exception as err:
            raise DataError(
                f"TFDS dataset {spec.name!r} was not found {where} ({type(err).__name__}); "
                "prepare it there first or pass the right --data-dir."
            ) from err
        file_format = getattr(info.file_format, "value", str(info.file_format))
        if file_format != "array_record":
            raise DataError(
                f"TFDS dataset {spec.name!r} {where} is stored as {file_format}, which needs "
                "TensorFlow to read; rebuild it with --file_format=array_record."
            )
        features = set(info.features.keys()) if hasattr(info.features, "keys") else set()
        if spec.text_feature.split("/")[0] not in features:
            raise DataError(
                f"TFDS dataset {spec.name!r} has no feature {spec.text_feature!r} (it has "
                f"{', '.join(sorted(features))}); name the text with --text-feature."
            )
        try:
            self._source = builder.as_data_source(split=spec.split)
        except Exception as err:
            raise DataError(
                f"cannot open split {spec.split!r} of TFDS dataset {spec.name!r} {where} "
                f"({err}); choose one of {', '.join(info.splits.keys())}."
            ) from err
        self.sentence_rule: Literal["lines", "rule"] = (
            "lines" if info.name == LOCAL_DATASET else "rule"
        )
        self._identity = {
            "dataset": info.full_name,
            "split": spec.split,
            "text_feature": spec.text_feature,
            "num_examples": len(self._source),
            "splits": {k: int(v.num_bytes) for k, v in info.splits.items()},
        }

    def __len__(self) -> int:
        return len(self._source)

    def describe(self) -> dict[str, Any]:
        return dict(self._identity)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self._identity, sort_keys=True).encode()).hexdigest()

    def documents(self, start: int, stop: int) -> list[list[str]]:
        """Documents [start, stop): decoded as UTF-8 (invalid bytes replaced) and split into
        sentences; empty ones come back as empty lists so indices stay aligned."""
        examples = self._source.__getitems__(list(range(start, stop)))
        result = []
        for example in examples:
            raw = _feature(example, self.spec.text_feature)
            text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
            if self.sentence_rule == "lines":
                result.append([line for line in text.split("\n") if line.strip()])
            else:
                result.append(split_sentences(text))
        return result
