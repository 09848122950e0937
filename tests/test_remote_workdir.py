"""A workdir on gs://: training, resume (also from an older step, which trims metrics.jsonl
and sets checkpoints aside on the bucket), eval, export (also to gs://) and load_pretrained run
with the workdir given as a gs:// URL, against a stand-in bucket, and give bitwise the results
of a local workdir. Paths that must be files (store, tokenizer, HF directories) refuse a URL in
one sentence; a failed metrics upload is retried, and reported without hiding another error.

The stand-in: an fsspec filesystem registered for gs:// that keeps objects under a local
directory (what epath, and so our code and Orbax's directory handling, talk to), and TensorStore
pointed at the same directory (Orbax's array data goes through TensorStore's own GCS driver,
which cannot be redirected without a GCS emulator). Everything above the storage calls is the
code a real bucket runs.
"""

from __future__ import annotations

import importlib
import json
import logging
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

from bertgpt_jax import cli, load_pretrained
from bertgpt_jax.core import fs
from bertgpt_jax.core.config import load_config
from bertgpt_jax.data.store import open_store
from bertgpt_jax.hf import files as hf_files
from bertgpt_jax.pretrained.export import export
from bertgpt_jax.training.hf_init import state_from_hf
from bertgpt_jax.training.loop import train_and_evaluate

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


def _values(rows: list[dict]) -> list[dict]:
    """The rows without their timings (step_time, tokens_per_sec, ...), which vary."""
    timing = {"step_time", "tokens_per_sec", "model_tflops", "mfu"}
    return [{k: v for k, v in row.items() if k not in timing} for row in rows]


def _run(workdir: str, steps: int, restore_step: int | None = None) -> dict:
    config = load_config(
        ROOT / "configs/bert_tiny.yaml",
        [*TINY, f"train.steps={steps}", f"data.path={default_store()}"],
    )
    return train_and_evaluate(config, workdir, restore_step=restore_step)


def _eval(workdir: str, capsys) -> dict:
    capsys.readouterr()
    assert cli.main(["eval", "--workdir", workdir]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_gs_workdir_trains_resumes_and_exports_like_a_local_one(
    bucket, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # a gs:// URL mistaken for a local path would land here
    local = tmp_path / "local"
    remote = bucket / "bkt" / "run"
    first: dict[Path, list[dict]] = {}
    for workdir, root in ((str(local), local), ("gs://bkt/run", remote)):
        _run(workdir, 5)  # checkpoints at 3 and 5
        _run(workdir, 8)  # resumes from 5 (train.steps changed: a recorded change)
        # keep=3: step 3 was removed when step 8 was saved
        assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["5", "6", "8"]
        first[root] = _rows((root / "metrics.jsonl").read_text())
        # From step 5 again: 6 and 8 are set aside, rows 6-8 trimmed, then trained and logged anew.
        _run(workdir, 8, restore_step=5)

    assert not (tmp_path / "gs:").exists()
    assert sorted(p.name for p in (remote / "checkpoints").iterdir()) == ["5", "6", "8"]
    for root in (local, remote):
        aside = sorted((root / "set_aside").glob("*/*"))
        assert [p.name for p in aside] == ["6", "8"]
        assert all((p / "commit_success.txt").is_file() for p in aside)  # whole steps moved
        assert (root / "checkpoints/8/commit_success.txt").is_file()  # launch.supervisor's check
        again = _rows((root / "metrics.jsonl").read_text())
        assert _values(again) == _values(first[root])  # each step once, bitwise the same run
    assert (remote / "config.yaml").read_text() == (local / "config.yaml").read_text()
    assert (remote / "tokenizer.model").read_bytes() == (local / "tokenizer.model").read_bytes()
    assert list((remote / "tb").glob("events.out.tfevents.*")), "TensorBoard events not uploaded"
    ours = _rows((remote / "metrics.jsonl").read_text())
    theirs = _rows((local / "metrics.jsonl").read_text())
    assert [r["step"] for r in ours] == list(range(1, 9))  # each step once, across the resume
    for a, b in zip(ours, theirs, strict=True):
        assert (a["loss"], a["grad_norm"]) == (b["loss"], b["grad_norm"])

    evaluated = _eval("gs://bkt/run", capsys)
    assert evaluated["step"] == 8 and evaluated == _eval(str(local), capsys)

    out_remote = export("gs://bkt/run", tmp_path / "hf_remote")
    out_local = export(local, tmp_path / "hf_local")
    a, b = load_file(out_remote / "model.safetensors"), load_file(out_local / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert (out_remote / "tokenizer.json").read_text() == (out_local / "tokenizer.json").read_text()

    # --output on the bucket: built locally, then uploaded; the files of a local --output, byte
    # for byte (including the model card, whose metric table has this workdir's timings).
    argv = ["export", "--workdir", "gs://bkt/run", "--output", "gs://bkt/hf"]
    assert cli.main(argv) == 0
    files = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["files"]
    assert files == sorted(p.name for p in out_remote.iterdir())
    for name in files:
        assert (bucket / "bkt/hf" / name).read_bytes() == (out_remote / name).read_bytes()
    assert cli.main(argv) == 2 and "already exists" in capsys.readouterr().err
    _failed_upload_leaves_nothing(bucket, monkeypatch)

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


def _failed_upload_leaves_nothing(bucket: Path, monkeypatch) -> None:
    sent: list[str] = []
    copy = fs.copy_file

    def flaky(source, target):
        if len(sent) == 2:
            raise OSError("503 Service Unavailable")
        copy(source, target)
        sent.append(target.name)

    monkeypatch.setattr(fs, "copy_file", flaky)
    with pytest.raises(OSError, match="503"):
        export("gs://bkt/run", "gs://bkt/hf_failed")
    assert "config.json" not in sent  # uploaded last: a partial upload is never an HF directory
    assert not [p for p in (bucket / "bkt").glob("hf_failed/**/*") if p.is_file()]


def test_urls_where_files_are_needed_fail_in_one_sentence(bucket, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # where pathlib would have made the folders "gs:" and "hf:"
    text = tmp_path / "text.txt"
    text.write_text("one sentence.\n\nanother one.\n")
    cases = [
        (["prepare", "--input", str(text), "--tokenizer", "tok", "--output", "gs://bkt/data"],
         "prepare --output gs://bkt/data must be a path on a file system"),
        (["prepare", "--input", str(text), "--tokenizer", "gs://bkt/tok", "--output", "store"],
         "tokenizer gs://bkt/tok must be"),
        (["tokenizer", "--input", str(text), "--vocab-size", "64", "--output", "gs://bkt/tok"],
         "tokenizer --output gs://bkt/tok must be"),
        (["tokenizer", "--from-model", "m.model", "--output", "gs://bkt/tok"],
         "tokenizer --output gs://bkt/tok must be"),
        (["export", "--workdir", "runs/x", "--output", "hf://user/model"],
         "export --output hf://user/model must be"),
        (["train", "--config", str(ROOT / "configs/bert_tiny.yaml"), "--workdir", "gcs://b/r"],
         "the URLs understood here are gs:// or s3://"),
    ]  # fmt: skip
    errors = []
    for argv, expected in cases:
        assert cli.main(argv) == 2, argv
        errors.append(capsys.readouterr().err.strip())
        assert expected in errors[-1] and "\n" not in errors[-1], errors[-1]
    assert "mounted as a file system (e.g. /gcs/bkt/data after `gcsfuse bkt" in errors[0]
    (bucket / "bkt/hf").mkdir(parents=True)
    (bucket / "bkt/hf/config.json").write_text("{}")
    for call, name in [
        (lambda: open_store("gs://bkt/data"), "data store (data.path) gs://bkt/data"),
        (lambda: state_from_hf(None, "gs://bkt/hf", None), "checkpoint.init_from_hf gs://bkt/hf"),
        (lambda: load_pretrained("gs://bkt/hf"), "HuggingFace model directory gs://bkt/hf"),
        (lambda: hf_files.save_hf("gs://bkt/out", {}, None), "save_hf out_dir gs://bkt/out"),
    ]:
        with pytest.raises(fs.FsError, match="must be a path on a file system") as err:
            call()
        assert str(err.value).startswith(name), err.value
        if name.endswith("gs://bkt/hf"):
            assert "copy it to a local disk (gcloud storage cp -r gs://bkt/hf .)" in str(err.value)
    assert "write it locally, then gcloud storage cp -r DIR gs://bkt/out" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gcs", "text.txt"]  # nothing made


def test_a_failed_metrics_upload_is_retried_and_never_hides_an_error(bucket, monkeypatch, caplog):
    remote = fs.as_path("gs://bkt/m")
    failures: list[OSError] = []
    write_bytes = type(remote).write_bytes

    def flaky(self, data):  # the stand-in bucket, failing when told to
        if failures:
            raise failures.pop()
        return write_bytes(self, data)

    monkeypatch.setattr(type(remote), "write_bytes", flaky)
    caplog.set_level(logging.WARNING, logger="bertgpt_jax.core.fs")

    def logged() -> list[str]:
        return [r.levelname for r in caplog.records if r.name == "bertgpt_jax.core.fs"]

    mirror = fs.Mirror(remote, every_s=0.0)
    (mirror.local / "metrics.jsonl").write_text('{"step": 1}\n')
    failures.append(OSError("503 Service Unavailable"))
    mirror.sync()  # inside the training loop: logged, not raised
    assert logged() == ["WARNING"]  # once per failed sync
    assert "retrying at the next sync" in caplog.text and "503" in caplog.text
    assert not (bucket / "bkt/m/metrics.jsonl").exists()
    with (mirror.local / "metrics.jsonl").open("a") as f:
        f.write('{"step": 2}\n')
    mirror.sync()
    assert (bucket / "bkt/m/metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'
    mirror.close()
    assert not mirror.local.exists() and logged() == ["WARNING"]

    # The last upload fails: an error naming the kept local copy, unless one is in flight.
    for in_flight in (False, True):
        mirror = fs.Mirror(remote)
        (mirror.local / "tb").mkdir()
        (mirror.local / "tb" / "events").write_bytes(b"x")
        failures.append(OSError("quota exceeded"))
        if in_flight:
            with pytest.raises(KeyError, match="the training error"):
                try:
                    raise KeyError("the training error")
                finally:
                    mirror.close()  # as MetricsWriter.close in train_and_evaluate's finally
            assert logged()[-1] == "ERROR" and "are kept" in caplog.text
        else:
            with pytest.raises(fs.FsError, match=r"quota exceeded.*are kept"):
                mirror.close()
        assert (mirror.local / "tb" / "events").read_bytes() == b"x"


def test_a_finished_run_reports_its_final_metrics_again(tmp_path):
    """Training a workdir that is already at train.steps runs no step and returns the metrics
    saved with its last checkpoint (what `bertgpt train` prints as "final"), not nothing."""
    first = _run(str(tmp_path / "run"), 3)
    assert {"loss", "learning_rate", "grad_norm"} <= set(first)
    assert _run(str(tmp_path / "run"), 3) == first
