"""Generation with a KV cache, and BERT fill-mask: cached logits equal a full recomputation,
greedy ids equal transformers' `generate` on our export, batched equals alone, one device
equals a (2,2,2) mesh, a new prompt length inside a bucket does not recompile, sampled first
tokens follow the filtered distribution, fill-mask equals transformers' pipeline, and bad
requests raise ConfigError (exit 2 from the CLI)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from scipy import stats
from test_data_shared import default_tokenizer
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import GPT2LMHeadModel, pipeline

from bertgpt_jax import load_pretrained
from bertgpt_jax.cli import main
from bertgpt_jax.core.config import MeshConfig, load_config
from bertgpt_jax.core.errors import ConfigError
from bertgpt_jax.data.tokenizers import load_tokenizer
from bertgpt_jax.generation import sampling
from bertgpt_jax.hf import files as hf_files
from bertgpt_jax.hf.tokenizer import write_hf_tokenizer
from bertgpt_jax.parallel.sharding import make_mesh
from bertgpt_jax.tasks import build_model

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TOL = 1e-4
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<|endoftext|>"]
WORDS = [
    "the",
    "a",
    "an",
    "cat",
    "dog",
    "bird",
    "fish",
    "tree",
    "house",
    "river",
    "sun",
    "moon",
    "sat",
    "ran",
    "flew",
    "swam",
    "saw",
    "ate",
    "big",
    "small",
    "red",
    "blue",
    "green",
    "old",
    "new",
    "on",
    "in",
    "under",
    "over",
    "by",
    "with",
    "and",
    "or",
    "but",
    "is",
    "was",
    "will",
    "can",
    ".",
    ",",
    "!",
    "?",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "up",
    "down",
    "left",
    "right",
    "here",
    "there",
    "now",
    "then",
]
VOCAB = SPECIALS + WORDS + [f"w{i}" for i in range(80 - len(SPECIALS) - len(WORDS))]  # 80
PROMPTS = [[9, 10, 11, 12, 13], [20, 21, 22], [30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40]]


def _config(family: str, **changes):
    name = "bert_tiny" if family == "bert" else "gpt_tiny"
    base = load_config(CONFIGS / f"{name}.yaml").model
    return dataclasses.replace(base, vocab_size=len(VOCAB), max_len=48, **changes)


def _random_params(config, seed: int) -> dict:
    """Every parameter random (init leaves biases 0 and norms 1, which would hide mistakes)."""
    params = nnx.state(build_model(config, jax.random.key(seed)), nnx.Param).to_pure_dict()
    rng = np.random.default_rng(seed)

    def noisy(path, leaf):
        noise = 0.2 * rng.standard_normal(leaf.shape).astype(np.float32)
        return noise + 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else noise

    return jax.tree_util.tree_map_with_path(noisy, params)


def _write_tokenizer(path: Path, family: str) -> None:
    """A word-level tokenizer over VOCAB with the project's special ids, as HF files."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(SPECIALS)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "[PAD]"}
    config["unk_token"] = "[UNK]"
    if family == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
        config.update(cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    else:
        config.update(bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def gpt_dir(tmp_path_factory) -> Path:
    config = _config("gpt")
    path = tmp_path_factory.mktemp("gpt")
    specials = {"pad_token_id": 0, "bos_token_id": 5, "eos_token_id": 5}
    hf_files.save_hf(path, _random_params(config, seed=3), config, extra_config=specials)
    _write_tokenizer(path, "gpt")
    return path


@pytest.fixture(scope="module")
def gpt(gpt_dir):
    return load_pretrained(gpt_dir)


def _full_logits(model, ids: list[int]) -> np.ndarray:
    """Logits [L, V] of a full (uncached) forward pass over ids."""
    return np.asarray(model(np.asarray([ids]))["logits"][0])


@pytest.mark.parametrize("scan_layers", [True, False])
def test_cached_decode_logits_equal_full_recomputation(gpt, scan_layers):
    """Prefill of a ragged batch, then 6 decode steps feeding fixed tokens: at every step each
    row's logits equal a full forward pass over its prompt + tokens so far."""
    config = dataclasses.replace(gpt.config, scan_layers=scan_layers)
    model = nnx.merge(gpt._graphdef, gpt._state)
    model.core.config = config
    b, lp, t = len(PROMPTS), 16, 24
    ids = np.zeros((b, lp), np.int32)
    for i, p in enumerate(PROMPTS):
        ids[i, : len(p)] = p
    lengths = np.array([len(p) for p in PROMPTS])
    shape = (config.num_layers, b, config.num_heads, t, config.head_dim)
    cache = (jnp.zeros(shape), jnp.zeros(shape))
    hidden, cache = model.core.decode(jnp.asarray(ids), cache, jnp.zeros(b, jnp.int32))
    last = hidden[np.arange(b), lengths - 1]
    fed = np.random.default_rng(0).integers(6, len(VOCAB), (6, b))  # [steps, B]
    step_logits = []
    for step in range(7):
        step_logits.append(np.asarray(model.core.embeddings.attend(last, jnp.float32)))  # [B, V]
        if step < 6:
            index = jnp.asarray(lengths + step)
            layers = None if scan_layers else model.core.layer_states()  # both decode paths
            token = jnp.asarray(fed[step][:, None])
            hidden, cache = model.core.decode(token, cache, index, layers=layers)
            last = hidden[:, 0]
    worst = 0.0
    for i, prompt in enumerate(PROMPTS):
        # Causal: the full pass's logits at position p are those of the prefix ending at p.
        full = _full_logits(gpt, list(prompt) + fed[:, i].tolist())[len(prompt) - 1 :]  # [7, V]
        worst = max(worst, float(np.abs(np.stack(step_logits)[:, i] - full).max()))
    print(f"max |cached - full| logit error: {worst:.2e}")
    assert worst < TOL, worst
    assert np.abs(full).max() > 1.0  # not trivially small


def _hf_greedy(path: Path, prompt: list[int], n: int, eos: int | None) -> list[int]:
    model = GPT2LMHeadModel.from_pretrained(path, attn_implementation="eager").eval()
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=n,
            eos_token_id=eos,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


def test_greedy_equals_transformers_generate(gpt, gpt_dir):
    """Token for token, alone and as one ragged batch, with a stop id taken from the output."""
    n = 12
    ours = gpt.generate(PROMPTS, n, temperature=0.0)
    for prompt, got in zip(PROMPTS, ours, strict=True):
        expected = _hf_greedy(gpt_dir, prompt, n, eos=5)
        # HF includes the eos it stopped at; ours reports it as the stop reason.
        stopped = len(expected) < n or expected[-1] == 5
        assert got.ids + ([5] if got.stop_reason == "eos" else []) == expected
        assert got.stop_reason == ("eos" if stopped else "length")
        alone = gpt.generate([prompt], n, temperature=0.0)[0]
        assert alone.ids == got.ids
    assert len({tuple(c.ids) for c in ours}) == len(PROMPTS)  # outputs differ by prompt
    # A stop id that the first row produces mid-way: both stop there.
    stop = ours[0].ids[len(ours[0].ids) // 2]
    expected = _hf_greedy(gpt_dir, PROMPTS[0], n, eos=stop)
    got = gpt.generate(PROMPTS, n, temperature=0.0, stop=[stop])[0]
    assert got.ids + [stop] == expected and got.stop_reason == "stop"


def test_logprobs_are_the_full_models(gpt):
    out = gpt.generate([PROMPTS[1]], 5, temperature=0.0)[0]
    seq = PROMPTS[1] + out.ids
    logits = _full_logits(gpt, seq)
    full = jax.nn.log_softmax(logits[len(PROMPTS[1]) - 1 : -1], axis=-1)
    expected = full[np.arange(len(out.ids)), out.ids]
    np.testing.assert_allclose(out.logprobs, expected, atol=TOL)


@pytest.mark.parametrize(
    "options",
    [dict(temperature=0.0), dict(temperature=0.8, top_k=20, top_p=0.9, min_p=0.05, seed=11)],
)
def test_batched_equals_one_at_a_time(gpt, options):
    batch = gpt.generate([PROMPTS[2], PROMPTS[0], PROMPTS[1]], 10, **options)
    for prompt, got in zip([PROMPTS[2], PROMPTS[0], PROMPTS[1]], batch, strict=True):
        alone = gpt.generate([prompt], 10, **options)[0]
        assert alone.ids == got.ids and alone.stop_reason == got.stop_reason
        np.testing.assert_allclose(alone.logprobs, got.logprobs, atol=TOL)
    if "seed" in options:  # another seed draws another continuation
        other = gpt.generate([PROMPTS[2]], 10, **{**options, "seed": 12})[0]
        assert other.ids != batch[0].ids


def test_prompt_lengths_inside_a_bucket_do_not_recompile(gpt_dir):
    model = load_pretrained(gpt_dir)
    generator = model.generator()
    model.generate([[7] * 5], 3, temperature=0.0)
    model.generate([[8] * 7, [9] * 2], 6, temperature=0.0)  # batch 2 is a new batch bucket
    model.generate([[8] * 3, [9] * 8], 8, temperature=0.0, stop=[17])
    assert generator.compiles == 2
    model.generate([[8] * 9], 3, temperature=0.0)  # prompt bucket 16
    model.generate([[8] * 3], 3, temperature=0.7, seed=4)  # sampling: another program
    model.generate([[8] * 6], 5, temperature=1.3, seed=5)
    assert generator.compiles == 4 == generator._run._cache_size()


def test_mesh_equals_single_device(gpt):
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    for options in (dict(temperature=0.0), dict(temperature=0.9, top_p=0.8, seed=3)):
        single = gpt.generate(PROMPTS, 8, **options)
        sharded = gpt.generate(PROMPTS, 8, mesh=mesh, **options)
        for a, b in zip(single, sharded, strict=True):
            assert a.ids == b.ids
            np.testing.assert_allclose(a.logprobs, b.logprobs, atol=TOL)
    state = gpt.generator(mesh)._state
    kernel = state["core"]["layers"]["attention"]["query"]["kernel"][...]
    assert kernel.sharding.spec[2] == "tensor"  # heads on `tensor`


def test_sampled_first_tokens_follow_the_filtered_distribution(gpt):
    """2,000 prompts, one seed each: the first sampled token's frequencies against the
    top-k/top-p filtered softmax of the model's own logits (chi-square)."""
    prompt, n = PROMPTS[1], 2000
    options = dict(temperature=1.5, top_k=12, top_p=0.95)
    out = gpt.generate([prompt] * n, 1, seed=list(range(n)), **options)
    counts = np.bincount([c.ids[0] if c.ids else 5 for c in out], minlength=len(VOCAB))
    rule, values = sampling.make_params(**options)
    logits = jnp.asarray(_full_logits(gpt, prompt)[-1:])
    filtered = np.asarray(sampling.filter_logits(logits, rule, values))[0].astype(np.float64)
    expected = np.exp(filtered - filtered.max())
    expected /= expected.sum()
    assert counts[expected == 0].sum() == 0
    support = expected > 0
    assert support.sum() > 3
    assert stats.chisquare(counts[support], n * expected[support]).pvalue > 1e-3


def test_text_prompts_stop_strings_and_streaming(gpt):
    text = "the cat sat on"
    out = gpt.generate([text], 8, temperature=0.0)[0]
    assert out.text is not None and out.text.split() == [VOCAB[i] for i in out.ids]
    assert out.ids == gpt.generate([gpt.tokenizer.encode(text)], 8, temperature=0.0)[0].ids
    word = out.text.split()[2]
    cut = gpt.generate([text], 8, temperature=0.0, stop=[f" {word}"])[0]
    assert cut.stop_reason == "stop_string" and f" {word}" not in cut.text
    assert out.text.startswith(cut.text) and len(cut.ids) < len(out.ids)
    pieces: list[str] = []
    streamed = gpt.generate([text], 8, temperature=0.0, on_text=pieces.append)[0]
    assert "".join(pieces) == streamed.text == out.text


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    config = _config("bert")
    path = tmp_path_factory.mktemp("bert")
    hf_files.save_hf(path, _random_params(config, seed=4), config, extra_config={"pad_token_id": 0})
    _write_tokenizer(path, "bert")
    return path


def test_fill_mask_equals_transformers_pipeline(bert_dir):
    texts = ["the cat [MASK] on the big tree .", "a [MASK] dog ran [MASK] the river"]
    ours = load_pretrained(bert_dir).fill_mask(texts, top_k=5)
    fill = pipeline("fill-mask", model=str(bert_dir), tokenizer=str(bert_dir), device="cpu")
    for text, got in zip(texts, ours, strict=True):
        theirs = fill(text, top_k=5)
        theirs = [theirs] if isinstance(theirs[0], dict) else theirs  # one mask: a flat list
        assert len(got) == len(theirs) == text.count("[MASK]")
        for mine, hf in zip(got, theirs, strict=True):
            assert [g["token_id"] for g in mine] == [h["token"] for h in hf]
            np.testing.assert_allclose(
                [g["score"] for g in mine], [h["score"] for h in hf], atol=1e-5
            )
            assert [g["token"] for g in mine] == [h["token_str"] for h in hf]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda g, b: g.generate([[7] * 49], 1), "positions"),
        (lambda g, b: g.generate([[7] * 40], 9), "overflows"),
        (lambda g, b: g.generate([[7]], 4, temperature=-0.1), "temperature"),
        (lambda g, b: g.generate([[7]], 4, top_p=0.0), "top_p"),
        (lambda g, b: g.generate([[7]], 4, top_p=1.5), "top_p"),
        (lambda g, b: b.generate([[7]], 4), "GPT"),
        (lambda g, b: g.fill_mask("the [MASK] cat"), "BERT"),
        (lambda g, b: b.fill_mask("the big cat"), "no [MASK]"),
    ],
)
def test_bad_requests_raise_config_error(gpt, bert_dir, call, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        call(gpt, load_pretrained(bert_dir))


def test_cli_generate_and_fill_mask(gpt_dir, bert_dir, capsys):
    assert main(["generate", "--model", str(gpt_dir), "--prompt", "the cat", "--prompt",
                 "a dog ran", "--max-new-tokens", "5", "--temperature", "0", "--json"]) == 0  # fmt: skip
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = load_pretrained(gpt_dir).generate(["the cat", "a dog ran"], 5, temperature=0.0)
    assert [line["ids"] for line in lines] == [c.ids for c in expected]
    assert {"ids", "text", "logprobs", "stop_reason"} <= set(lines[0])
    assert main(["generate", "--model", str(gpt_dir), "--prompt", "the cat",
                 "--max-new-tokens", "5", "--temperature", "0"]) == 0  # fmt: skip
    assert capsys.readouterr().out.strip() == expected[0].text
    assert main(["fill-mask", "--model", str(bert_dir), "the [MASK] sat", "--top-k", "3"]) == 0
    assert len(json.loads(capsys.readouterr().out)["masks"][0]) == 3
    assert main(["generate", "--model", str(gpt_dir), "--prompt", "x", "--top-p", "2"]) == 2
    assert main(["fill-mask", "--model", str(gpt_dir), "the [MASK] sat"]) == 2
    assert "BERT" in capsys.readouterr().err


def test_sentencepiece_tokenizer_as_in_a_workdir(tmp_path):
    """A directory with only our SentencePiece tokenizer.model (what a training workdir keeps)
    encodes, decodes and stops at its own <|endoftext|>; the exported tokenizer.json agrees."""
    sp_path = default_tokenizer() / "tokenizer.model"
    sp = load_tokenizer(sp_path).processor
    outputs = {}
    for kind in ("sentencepiece", "hf"):
        config = dataclasses.replace(_config("gpt"), vocab_size=sp.GetPieceSize())
        path = tmp_path / kind
        hf_files.save_hf(path, _random_params(config, seed=5), config)
        (path / "tokenizer.model").write_bytes(sp_path.read_bytes())
        if kind == "hf":
            write_hf_tokenizer(path, path / "tokenizer.model", False, config.max_len)
        model = load_pretrained(path)
        assert model.eos_id == sp.PieceToId("<|endoftext|>")
        out = model.generate(["Return the value of"], 10, temperature=0.0)[0]
        assert out.text == sp.Decode(out.ids)
        outputs[kind] = out.ids
    assert outputs["sentencepiece"] == outputs["hf"]
    config = dataclasses.replace(_config("bert"), vocab_size=sp.GetPieceSize())
    hf_files.save_hf(tmp_path / "bert", _random_params(config, seed=6), config)
    (tmp_path / "bert" / "tokenizer.model").write_bytes(sp_path.read_bytes())
    guesses = load_pretrained(tmp_path / "bert").fill_mask("Return a [MASK] of it.", top_k=2)
    assert len(guesses) == 1 and len(guesses[0]) == 1 and len(guesses[0][0]) == 2
