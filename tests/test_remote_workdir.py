"""A workdir on gs://: training, resume, export and load_pretrained run with the workdir
given as a gs:// URL, against a stand-in bucket, and give bitwise the results of a local workdir.

The stand-in: an fsspec filesystem registered for gs:// that keeps objects under a local
directory (what epath, and so our code and Orbax's directory handling, talk to), and TensorStore
pointed at the same directory (Orbax's array data goes through TensorStore's own GCS driver,
which cannot be redirected without a GCS emulator). Everything above the storage calls is the
code a real bucket runs.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
from etils.epath import backend as epath_backend
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from orbax.checkpoint._src.path import gcs_utils
from orbax.checkpoint._src.serialization import tensorstore_utils
from safetensors.numpy import load_file
from test_data_shared import default_store

from bertgpt_jax import cli, fs, load_pretrained
from bertgpt_jax.config import load_config
from bertgpt_jax.export import export
from bertgpt_jax.train import train_and_evaluate

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "train.batch_size=8",
    "train.warmup_steps=2",
    "train.log_every=1",
    "train.eval_every=0",
    "data.seq_len=32",
    "mesh.data=-1",
    "checkpoint.every_steps=3",
]


@pytest.fixture
def bucket(tmp_path, monkeypatch) -> Path:
    """Installs the stand-in for gs:// and returns the local directory that holds its objects."""
    root = tmp_path / "gcs"
    root.mkdir()

    class FakeGCS(DirFileSystem):
        protocol = ("gs", "gcs")
        cachable = False

        def __init__(self, *args, finalize_on_close=None, **kwargs):
            super().__init__(path=str(root), fs=LocalFileSystem(auto_mkdir=True))

        @classmethod
        def _strip_protocol(cls, path):
            path = str(path)
            for prefix in ("gs://", "gcs://"):
                path = path.removeprefix(prefix)
            return path.rstrip("/")

    def to_local(path: str) -> str:
        return str(root / path.removeprefix("gs://")) if path.startswith("gs://") else path

    class Bucket:  # what Orbax asks of google.cloud.storage
        hierarchical_namespace_enabled = False

    registry = importlib.import_module("fsspec.registry")._registry
    for scheme in FakeGCS.protocol:
        monkeypatch.setitem(registry, scheme, FakeGCS)
    normalize = tensorstore_utils._normalize_path
    monkeypatch.setattr(tensorstore_utils, "_normalize_path", lambda p: to_local(normalize(p)))
    monkeypatch.setattr(gcs_utils, "get_bucket", lambda name: Bucket())
    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    yield root
    epath_backend.fsspec_backend._get_filesystem.cache_clear()


def _rows(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def _run(workdir: str, steps: int) -> dict:
    config = load_config(
        ROOT / "configs/bert_tiny.yaml",
        [*TINY, f"train.steps={steps}", f"data.path={default_store()}"],
    )
    return train_and_evaluate(config, workdir)


def test_gs_workdir_trains_resumes_and_exports_like_a_local_one(bucket, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a gs:// URL mistaken for a local path would land here
    local = tmp_path / "local"
    for workdir in (str(local), "gs://bkt/run"):
        _run(workdir, 5)  # checkpoints at 3 and 5
        _run(workdir, 8)  # resumes from 5 (train.steps changed: a recorded change)
    remote = bucket / "bkt" / "run"

    assert not (tmp_path / "gs:").exists()
    # keep=3: step 3 was removed from the bucket when step 8 was saved
    assert sorted(p.name for p in (remote / "checkpoints").iterdir()) == ["5", "6", "8"]
    assert (remote / "config.yaml").read_text() == (local / "config.yaml").read_text()
    assert (remote / "tokenizer.model").read_bytes() == (local / "tokenizer.model").read_bytes()
    assert list((remote / "tb").glob("events.out.tfevents.*")), "TensorBoard events not uploaded"
    ours = _rows((remote / "metrics.jsonl").read_text())
    theirs = _rows((local / "metrics.jsonl").read_text())
    assert [r["step"] for r in ours] == list(range(1, 9))  # each step once, across the resume
    for a, b in zip(ours, theirs, strict=True):
        assert (a["loss"], a["grad_norm"]) == (b["loss"], b["grad_norm"])

    out_remote = export("gs://bkt/run", tmp_path / "hf_remote")
    out_local = export(local, tmp_path / "hf_local")
    a, b = load_file(out_remote / "model.safetensors"), load_file(out_local / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert (out_remote / "tokenizer.json").read_text() == (out_local / "tokenizer.json").read_text()

    ids = np.arange(2, 18, dtype=np.int32).reshape(2, 8)
    from_bucket, from_disk = load_pretrained("gs://bkt/run"), load_pretrained(local)
    got, want = from_bucket(ids), from_disk(ids)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]))


def test_remote_scheme_without_backend_names_the_package(capsys):
    with pytest.raises(fs.FsError, match=r"s3fs.*pip install"):
        fs.as_path("s3://bucket/run")
    command = ["train", "--config", str(ROOT / "configs/bert_tiny.yaml"), "--workdir", "s3://b/r"]
    assert cli.main(command) == 2
    assert "needs the s3fs package" in capsys.readouterr().err


def test_move_tree_on_the_bucket(bucket):
    source = fs.as_path("gs://bkt/w/checkpoints/7")
    (source / "state" / "d").mkdir(parents=True, exist_ok=True)
    (source / "state" / "d" / "x.bin").write_bytes(b"\x00\x01")
    (source / "commit_success.txt").write_text("ok")
    fs.move_tree(source, fs.as_path("gs://bkt/w/set_aside/t/7"))
    moved = bucket / "bkt/w/set_aside/t/7"
    assert (moved / "state/d/x.bin").read_bytes() == b"\x00\x01"
    assert (moved / "commit_success.txt").read_text() == "ok"
    assert not (bucket / "bkt/w/checkpoints/7").exists()
