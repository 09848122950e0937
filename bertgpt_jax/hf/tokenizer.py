"""Our SentencePiece tokenizer as HuggingFace `tokenizers` files, for `bertgpt export`.

`AutoTokenizer.from_pretrained(dir)` loads `tokenizer.json` offline (no `sentencepiece` needed)
and gives the SentencePiece ids. The conversion follows transformers' `SpmConverter`: the same
pieces and scores in a Unigram model (or a BPE model whose merges are ranked by the score of the
merged piece), SentencePiece's precompiled normalization table (nmt_nfkc by default), trailing
and repeated whitespace removed, "▁" for spaces with a dummy prefix on the first word. BERT
exports add "[CLS] A [SEP] (B [SEP])" with token_type_ids, as our BERT examples are built;
GPT exports add nothing (as GPT-2's tokenizer). Known differences, none of which our data
pipeline produces: the special pieces spelled out inside raw text, and Unigram segmentations of
exactly equal score, which the two libraries may break differently. `check_same_ids` refuses a
conversion that differs otherwise.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers import processors as post
from tokenizers.models import BPE, Unigram

from bertgpt_jax.core.errors import ConfigError
from bertgpt_jax.data.tokenizers import SpecialIds
from bertgpt_jax.data.tokenizers.sentencepiece import (
    CLS_ID,
    EOT_ID,
    MASK_ID,
    MODEL_FILE,
    PAD_ID,
    SEP_ID,
    SPECIAL_TOKENS,
    UNK_ID,
)

_NORMAL, _UNKNOWN, _CONTROL, _USER, _BYTE = 1, 2, 3, 4, 6  # SentencePiece piece types
_UNIGRAM, _BPE = 1, 2
SAMPLE = (
    "The quick brown fox jumps over the lazy dog. It's 3.14159 -- or so; 42% of 1,000 said "
    '"no"!  Extra   spaces,\ttabs and trailing ones   \n'
    "Café naïve Ünïcödé, ＦＵＬＬ-width ＡＢＣ１２３, em—dash, “quotes” … (parenthesised) "
    "x = f(a[i], b{j}) <tag> @user #hash $5 ~tilde `code` 'single' snake_case CamelCase."
)


def hf_special_ids(specials: SpecialIds, paired: bool) -> dict[str, int]:
    """Special token ids for config.json: pad where the tokenizer has one; a model of unpaired
    text (GPT) also names its begin and end token (<|endoftext|> for both, as GPT-2)."""
    ids = {"pad_token_id": specials.pad}
    if not paired:
        ids.update(bos_token_id=specials.bos, eos_token_id=specials.eos)
    return {k: v for k, v in ids.items() if v is not None}


def _read_proto(path: Path) -> Any:
    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]
    proto.ParseFromString(path.read_bytes())
    return proto


def _bpe_merges(pieces: list[Any]) -> list[tuple[str, str]]:
    """Every split of a piece into two pieces, ranked by the merged piece's score (stable, as
    transformers' SentencePieceExtractor)."""
    ids = {p.piece: i for i, p in enumerate(pieces)}
    merges = []
    for p in pieces:
        if p.type != _NORMAL:
            continue
        pairs = [(p.piece[:k], p.piece[k:]) for k in range(1, len(p.piece))]
        pairs = sorted(
            ((a, b) for a, b in pairs if a in ids and b in ids),
            key=lambda ab: (ids[ab[0]], ids[ab[1]]),
        )
        merges += [(-p.score, a, b) for a, b in pairs]
    return [(a, b) for _, a, b in sorted(merges, key=lambda m: m[0])]


def build_tokenizer(sp_model: Path, paired: bool) -> Tokenizer:
    """A `tokenizers.Tokenizer` equivalent to the SentencePiece model at `sp_model`."""
    proto = _read_proto(sp_model)
    trainer, norm = proto.trainer_spec, proto.normalizer_spec
    byte_fallback = bool(trainer.byte_fallback)
    if trainer.model_type == _UNIGRAM:
        vocab = [(p.piece, p.score) for p in proto.pieces]
        tok = Tokenizer(Unigram(vocab, unk_id=trainer.unk_id, byte_fallback=byte_fallback))
    elif trainer.model_type == _BPE:
        ids = {p.piece: i for i, p in enumerate(proto.pieces)}
        merges = _bpe_merges(list(proto.pieces))
        unk = trainer.unk_piece
        tok = Tokenizer(BPE(ids, merges, unk_token=unk, fuse_unk=True, byte_fallback=byte_fallback))
    else:
        raise ConfigError(
            f"tokenizer {sp_model} is a SentencePiece model of type {trainer.model_type}; only "
            "unigram and bpe models can be exported to HuggingFace."
        )
    steps: list[Any] = []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:
        steps += [
            normalizers.Strip(left=False, right=True),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    tok.normalizer = normalizers.Sequence(steps)
    scheme = "first" if norm.add_dummy_prefix else "never"
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme)
    if byte_fallback:  # <0xE2><0x98><0x83> -> "☃", as transformers' LlamaConverter
        steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        strip = [decoders.Strip(" ", 1, 0)] if norm.add_dummy_prefix else []
        tok.decoder = decoders.Sequence(steps + strip)
    specials = [p.piece for p in proto.pieces if p.type in (_UNKNOWN, _CONTROL, _USER)]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    if paired:  # [CLS] A [SEP] B [SEP], token types 0/1, as BERT
        tok.post_processor = post.TemplateProcessing(
            single="[CLS]:0 $A:0 [SEP]:0",
            pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)],
        )
    return tok


def _score(sp: spm.SentencePieceProcessor, ids: list[int]) -> float:
    return sum(sp.GetScore(i) for i in ids)


def check_same_ids(tok: Tokenizer, sp: spm.SentencePieceProcessor, texts: Iterable[str]) -> int:
    """Raises unless `tok` gives SentencePiece's ids on every text, up to ties (segmentations of
    the same length and total score); returns the number of ties."""
    ties = 0
    for text in texts:
        ours, theirs = sp.Encode(text), tok.encode(text, add_special_tokens=False).ids
        if ours == theirs:
            continue
        tie = len(ours) == len(theirs) and math.isclose(
            _score(sp, ours), _score(sp, theirs), rel_tol=1e-6
        )
        if not tie:
            raise ConfigError(
                f"the HuggingFace conversion of the tokenizer gives other ids than SentencePiece "
                f"for {text[:60]!r} ({ours[:8]}... vs {theirs[:8]}...); please report this."
            )
        ties += 1
    return ties


def _config(paired: bool, max_len: int) -> dict[str, Any]:
    """tokenizer_config.json: the generic fast class, so nothing maps it to BERT's WordPiece."""
    names = {v: k for k, v in SPECIAL_TOKENS.items()}
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_len,
        "pad_token": names[PAD_ID],
        "unk_token": names[UNK_ID],
        "clean_up_tokenization_spaces": False,
    }
    if paired:
        config.update(cls_token=names[CLS_ID], sep_token=names[SEP_ID], mask_token=names[MASK_ID])
        config["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
    else:
        config.update(bos_token=names[EOT_ID], eos_token=names[EOT_ID])
        config["model_input_names"] = ["input_ids", "attention_mask"]
    return config


def write_hf_tokenizer(out_dir: Path, sp_model: Path, paired: bool, max_len: int) -> None:
    """Writes tokenizer.json, tokenizer_config.json, special_tokens_map.json, tokenizer.model
    (`sp_model` may already be that last file)."""
    tok = build_tokenizer(sp_model, paired)
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    check_same_ids(tok, sp, SAMPLE.splitlines() + [SAMPLE])
    tok.save(str(out_dir / "tokenizer.json"))
    config = _config(paired, max_len)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {k: v for k, v in config.items() if k.endswith("_token")}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    if Path(sp_model).resolve() != (out_dir / MODEL_FILE).resolve():
        shutil.copyfile(sp_model, out_dir / MODEL_FILE)


def add_chat_template(out_dir: Path, template: str) -> None:
    """Stores a chat template in out_dir's tokenizer_config.json (made if missing), where
    `transformers`' `apply_chat_template` finds it."""
    path = out_dir / "tokenizer_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    config["chat_template"] = template
    path.write_text(json.dumps(config, indent=2) + "\n")
