"""HuggingFace tokenizers (the Rust `tokenizers` library): loading any HF tokenizer directory,
and training BERT's WordPiece and GPT-2's byte-level BPE in HuggingFace's own format.

A directory may hold `tokenizer.json` (the fast-tokenizer file), or only the older files:
`vocab.txt` (WordPiece, as bert-base-uncased) or `vocab.json` + `merges.txt` (byte-level BPE, as
gpt2). Special tokens are read from `tokenizer_config.json` / `special_tokens_map.json` (their
`*_token` entries), else from the usual spellings present in the vocabulary. Texts are encoded
in batches by the Rust encoder on all its threads, with no special tokens added.

Trained tokenizers are laid out as the public checkpoints are: WordPiece with [PAD]=0,
[unused0..98], [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103 (bert-base-uncased's layout), and
byte-level BPE with <|endoftext|> as the last id (gpt2's 50256 at full size) and no pad token.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from bertgpt_jax.core.errors import DataError
from bertgpt_jax.data.tokenizers.base import SpecialIds, Tokenizer, TokenizerIdentity, files_sha256

FAST_FILE = "tokenizer.json"
CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")
WORDPIECE_FILES = ("vocab.txt",)
BPE_FILES = ("vocab.json", "merges.txt")
_SPELLINGS = {
    "pad": ("[PAD]", "<pad>"),
    "unk": ("[UNK]", "<unk>", "<|endoftext|>"),
    "cls": ("[CLS]", "<cls>", "<s>"),
    "sep": ("[SEP]", "<sep>", "</s>"),
    "mask": ("[MASK]", "<mask>"),
    "eos": ("<|endoftext|>", "</s>"),
    "bos": ("<|endoftext|>", "<s>"),
}
BERT_SPECIALS = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
EOT = "<|endoftext|>"


def is_hf_tokenizer_dir(path: Path) -> bool:
    return (
        (path / FAST_FILE).is_file()
        and _is_fast_file(path / FAST_FILE)
        or any(all((path / f).is_file() for f in files) for files in (WORDPIECE_FILES, BPE_FILES))
    )


def _is_fast_file(path: Path) -> bool:
    """HF's tokenizer.json (ours, next to a SentencePiece model, describes how it was made)."""
    return isinstance(_read_json(path).get("model"), dict)


def _token_name(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object file, or {} where there is none (or it is not an object)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _configured_specials(directory: Path) -> dict[str, str]:
    """`*_token` names from tokenizer_config.json, then special_tokens_map.json."""
    names: dict[str, str] = {}
    for file in reversed(CONFIG_FILES):
        data = _read_json(directory / file)
        for role in _SPELLINGS:
            name = _token_name(data.get(f"{role}_token"))
            if name:
                names[role] = name
    return names


def _load_backend(directory: Path) -> tokenizers.Tokenizer:
    if (directory / FAST_FILE).is_file() and _is_fast_file(directory / FAST_FILE):
        return tokenizers.Tokenizer.from_file(str(directory / FAST_FILE))
    if (directory / "vocab.txt").is_file():
        lower = _read_json(directory / CONFIG_FILES[0]).get("do_lower_case", True)
        wordpiece = tokenizers.BertWordPieceTokenizer(str(directory / "vocab.txt"), lowercase=lower)
        return wordpiece._tokenizer
    return tokenizers.ByteLevelBPETokenizer(
        str(directory / "vocab.json"), str(directory / "merges.txt")
    )._tokenizer


class HfTokenizer(Tokenizer):
    """A HuggingFace tokenizer directory, encoded by the Rust `tokenizers` library."""

    kind = "huggingface"

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory)
        try:
            self.backend = _load_backend(self.path)
        except Exception as err:  # the Rust loader raises plain Exceptions for bad files
            raise DataError(
                f"{self.path} is not a readable HuggingFace tokenizer ({err}); pass a directory "
                "with tokenizer.json, vocab.txt, or vocab.json + merges.txt."
            ) from err
        self.backend.no_truncation()
        self.backend.no_padding()
        defining = [FAST_FILE] if _is_fast_file(self.path / FAST_FILE) else []
        defining = defining or [
            f for f in (*WORDPIECE_FILES, *BPE_FILES) if (self.path / f).is_file()
        ]
        companions = [f for f in (*CONFIG_FILES, *WORDPIECE_FILES, *BPE_FILES) if f not in defining]
        self._defining = tuple(self.path / f for f in defining)
        self.files = self._defining + tuple(
            self.path / f for f in companions if (self.path / f).is_file()
        )
        self.specials = self._read_specials()
        named = {role: token_id for role, token_id in self.specials.present().items()}
        self._identity = TokenizerIdentity(
            files_sha256(list(self._defining)),
            self.vocab_size,
            tuple(sorted(named.items())),
            kind=self.kind,
        )

    def _read_specials(self) -> SpecialIds:
        configured = _configured_specials(self.path)
        found: dict[str, int | None] = {}
        for role, spellings in _SPELLINGS.items():
            names = [configured[role]] if role in configured else list(spellings)
            ids = [self.backend.token_to_id(n) for n in names]
            found[role] = next((i for i in ids if i is not None), None)
        return SpecialIds(**found)

    @property
    def identity(self) -> TokenizerIdentity:
        return self._identity

    @property
    def vocab_size(self) -> int:
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    def encode(self, texts: list[str], num_threads: int = 1) -> list[list[int]]:
        """The Rust encoder runs the batch on its own thread pool (RAYON_NUM_THREADS; the
        `num_threads` of SentencePiece is not used); `encode_batch_fast` skips the offsets."""
        del num_threads
        return [e.ids for e in self.backend.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        return str(self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special))

    def piece(self, token_id: int) -> str:
        return str(self.backend.id_to_token(int(token_id)))

    def word_start_table(self) -> np.ndarray:
        """WordPiece: pieces without the "##" prefix; byte-level BPE: pieces starting with "Ġ"
        (a space); Unigram/Metaspace: pieces starting with "▁"."""
        pieces = [self.backend.id_to_token(i) or "" for i in range(self.vocab_size)]
        model = json.loads(self.backend.to_str()).get("model", {})
        if model.get("type") == "WordPiece":
            prefix = model.get("continuing_subword_prefix", "##")
            table = np.asarray([not p.startswith(prefix) for p in pieces])
        elif model.get("type") == "BPE":
            table = np.asarray([p.startswith("Ġ") for p in pieces])
        else:
            table = np.asarray([p.startswith("\u2581") for p in pieces])
        table[self.specials.ids()] = True
        return table


def _limit(sentences: Iterable[str], limit: int) -> Iterator[str]:
    for count, sentence in enumerate(sentences):
        if count >= limit:
            return
        yield sentence


def _wordpiece(vocab_size: int) -> tuple[tokenizers.Tokenizer, trainers.Trainer]:
    tok = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=BERT_SPECIALS)
    return tok, trainer


def _byte_bpe(vocab_size: int) -> tuple[tokenizers.Tokenizer, trainers.Trainer]:
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # <|endoftext|> is added after training, so it takes the last id, as in gpt2.
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    return tok, trainer


def _tokenizer_config(kind: str, max_len: int) -> dict[str, Any]:
    if kind == "wordpiece":
        return {
            "tokenizer_class": "BertTokenizerFast",
            "do_lower_case": True,
            "model_max_length": max_len,
            "pad_token": "[PAD]",
            "unk_token": "[UNK]",
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
            "mask_token": "[MASK]",
            "clean_up_tokenization_spaces": False,
        }
    return {
        "tokenizer_class": "GPT2TokenizerFast",
        "model_max_length": max_len,
        "bos_token": EOT,
        "eos_token": EOT,
        "unk_token": EOT,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
    }


def train_hf_tokenizer(
    sentences: Iterable[str],
    output_dir: Path,
    vocab_size: int,
    kind: Literal["wordpiece", "byte-bpe"],
    *,
    max_sentences: int = 2_000_000,
    max_len: int = 512,
    description: str = "the input",
) -> HfTokenizer:
    """Trains BERT's WordPiece or GPT-2's byte-level BPE into `output_dir` in HuggingFace's
    format (tokenizer.json, the vocabulary files, tokenizer_config.json,
    special_tokens_map.json), so `AutoTokenizer.from_pretrained(output_dir)` gives its ids."""
    minimum = len(BERT_SPECIALS) + 64 if kind == "wordpiece" else 257 + 64
    if vocab_size < minimum:
        raise DataError(
            f"--vocab-size {vocab_size} is too small for {kind}; use at least {minimum}."
        )
    tok, trainer = _wordpiece(vocab_size) if kind == "wordpiece" else _byte_bpe(vocab_size)
    tok.train_from_iterator(_limit(sentences, max_sentences), trainer=trainer)
    if kind == "wordpiece":
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
        )
    else:
        tok.add_special_tokens([tokenizers.AddedToken(EOT, special=True)])
    if tok.get_vocab_size() < 2 * minimum // 3:
        raise DataError(
            f"{description} gave only {tok.get_vocab_size()} {kind} pieces; give more text."
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(output_dir / FAST_FILE))
    tok.model.save(str(output_dir))
    config = _tokenizer_config(kind, max_len)
    (output_dir / CONFIG_FILES[0]).write_text(json.dumps(config, indent=2) + "\n")
    special = {k: v for k, v in config.items() if k.endswith("_token")}
    (output_dir / CONFIG_FILES[1]).write_text(json.dumps(special, indent=2) + "\n")
    return HfTokenizer(output_dir)
