"""Byte-level BPE for source code, trained with HF ``tokenizers``, with token *byte* spans.

Byte-level BPE (GPT-2's scheme: every byte maps to one printable character before merging) is lossless: the
concatenated bytes of the tokens of ``text`` are exactly ``text.encode("utf-8")``, so ``decode(encode(t)) == t`` for
every string, and no ``<unk>`` is ever produced.

Spans are byte offsets, so that they line up with tree-sitter's byte positions (``domains.code.hierarchy``). HF's
offsets on ``str`` input are character offsets, and a multi-byte character split across two tokens gives both tokens
the whole character's offsets; the spans here are instead the running sum of each token's byte length, exact in
every case.

Special tokens (ids 0..3): ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``. Text is encoded with special-token matching
turned off, so a literal ``"<eos>"`` inside a source file is ordinary text, not the end-of-sequence token.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Iterator, List, NamedTuple, Sequence, Union

import numpy as np

__all__ = ["SPECIAL_TOKENS", "Encoded", "CodeTokenizer", "train_bpe", "TOKENIZER_FILE"]

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
TOKENIZER_FILE = "tokenizer.json"
INSTALL_HINT = 'pip install "zoo-pe[code]"'
Source = Union[str, bytes, os.PathLike]


def _tokenizers():
    try:
        import tokenizers
    except ImportError as e:
        raise ImportError(f"the code domain needs the package 'tokenizers' ({e}); install it with: {INSTALL_HINT}") from e
    return tokenizers


def _byte_decoder() -> dict:
    """GPT-2's byte -> printable character table, inverted (character -> byte value)."""
    from tokenizers import pre_tokenizers
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    # the table itself is fixed; rebuild it exactly as GPT-2 defines it
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    table = {chr(c): b for b, c in zip(bs, cs)}
    if set(table) != set(alphabet):
        raise RuntimeError("the installed tokenizers' ByteLevel alphabet differs from GPT-2's byte table")
    return table


class Encoded(NamedTuple):
    """``ids`` int64 ``[n]`` and ``spans`` int64 ``[n, 2]``: (start, end) byte offsets in ``text.encode("utf-8")``."""
    ids: np.ndarray
    spans: np.ndarray


class CodeTokenizer:
    """A trained byte-level BPE tokenizer (wraps a ``tokenizers.Tokenizer``)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.tokenizer.encode_special_tokens = True
        for tok in SPECIAL_TOKENS:
            if tokenizer.token_to_id(tok) is None:
                raise ValueError(f"tokenizer lacks the special token {tok!r}; train it with train_bpe()")
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = (tokenizer.token_to_id(t) for t in SPECIAL_TOKENS)
        self._build_byte_table()

    def _build_byte_table(self) -> None:
        byte_of = _byte_decoder()
        n = self.tokenizer.get_vocab_size(with_added_tokens=True)
        special = {v.content for v in self.tokenizer.get_added_tokens_decoder().values()}
        table: List[bytes] = []
        for i in range(n):
            tok = self.tokenizer.id_to_token(i)
            if tok is None:
                table.append(b"")
            elif tok in special:
                table.append(tok.encode("utf-8"))
            else:
                try:
                    table.append(bytes(byte_of[c] for c in tok))
                except KeyError as e:
                    raise ValueError(f"token {i} ({tok!r}) is not in the byte-level alphabet: is this a byte-level "
                                     f"BPE tokenizer?") from e
        self._token_bytes = table
        self._token_len = np.array([len(b) for b in table], dtype=np.int64)

    # ---- properties ---------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the serialised tokenizer: changes whenever the vocabulary or merges change."""
        return hashlib.sha256(self.tokenizer.to_str().encode("utf-8")).hexdigest()

    def __repr__(self) -> str:
        return f"CodeTokenizer(vocab_size={self.vocab_size})"

    # ---- encode / decode ----------------------------------------------------------------------------------
    def _spans(self, ids: np.ndarray) -> np.ndarray:
        ends = np.cumsum(self._token_len[ids]) if len(ids) else np.zeros(0, dtype=np.int64)
        starts = ends - self._token_len[ids]
        return np.stack([starts, ends], axis=1).astype(np.int64).reshape(-1, 2)

    def encode(self, text: str) -> Encoded:
        """Token ids and their byte spans in ``text.encode("utf-8")`` (no special tokens are added)."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__} (decode bytes as UTF-8 first)")
        ids = np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)
        return Encoded(ids, self._spans(ids))

    def encode_batch(self, texts: Sequence[str]) -> List[Encoded]:
        """``encode`` for many texts at once (HF encodes them in parallel)."""
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"encode_batch() item {i} is {type(t).__name__}, not str")
        out = []
        for enc in self.tokenizer.encode_batch(texts, add_special_tokens=False):
            ids = np.asarray(enc.ids, dtype=np.int64)
            out.append(Encoded(ids, self._spans(ids)))
        return out

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The exact bytes of ``ids`` (special tokens as their text, e.g. ``b"<eos>"``)."""
        return b"".join(self.token_bytes(i) for i in ids)

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of ``ids``; bytes that do not form valid UTF-8 (a window cut mid-character) become U+FFFD."""
        ids = [int(i) for i in ids]
        if skip_special:
            specials = {self.pad_id, self.bos_id, self.eos_id, self.unk_id}
            ids = [i for i in ids if i not in specials]
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token; ``ValueError`` for an id outside ``0 .. vocab_size - 1``."""
        i = int(token_id)
        if not 0 <= i < len(self._token_bytes):
            raise ValueError(f"token id {i} is out of range for a vocabulary of {len(self._token_bytes)}")
        return self._token_bytes[i]

    # ---- persistence --------------------------------------------------------------------------------------
    def save(self, directory: Union[str, os.PathLike]) -> Path:
        """Write ``directory/tokenizer.json`` atomically; returns its path."""
        from zoo.io import atomic_write_text
        if Path(directory).exists() and not Path(directory).is_dir():
            raise NotADirectoryError(f"cannot save the tokenizer into {directory}: it is a file, not a directory")
        return atomic_write_text(Path(directory) / TOKENIZER_FILE, self.tokenizer.to_str(pretty=True))

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "CodeTokenizer":
        """Load from a directory holding ``tokenizer.json`` or from the file itself."""
        tk = _tokenizers()
        path = Path(path)
        file = path / TOKENIZER_FILE if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer at {file} (expected a directory with {TOKENIZER_FILE} or the file)")
        text = file.read_text(encoding="utf-8", errors="replace")
        try:
            json.loads(text)
            tokenizer = tk.Tokenizer.from_str(text)
        except Exception as e:
            raise ValueError(f"{file}: not a valid tokenizers JSON file: {e}") from e
        return cls(tokenizer)


def _iter_texts(sources: Iterable[Source]) -> Iterator[str]:
    for i, src in enumerate(sources):
        if isinstance(src, os.PathLike):
            try:
                yield Path(src).read_bytes().decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"training file {src} is not valid UTF-8: {e}") from e
        elif isinstance(src, (bytes, bytearray)):
            yield bytes(src).decode("utf-8", errors="replace")
        elif isinstance(src, str):
            yield src
        else:
            raise TypeError(f"train_bpe() source {i} is {type(src).__name__}: pass str (text), bytes or a Path (file)")


def train_bpe(sources: Iterable[Source], vocab_size: int = 8192, min_frequency: int = 2,
              show_progress: bool = False) -> CodeTokenizer:
    """Train a byte-level BPE on ``sources``.

    Args:
        sources: texts (``str``), UTF-8 ``bytes``, or files (``pathlib.Path`` / any ``os.PathLike``). A plain
            ``str`` is always text, never a file name.
        vocab_size: final vocabulary size including the 256 byte tokens and the 4 special tokens.
        min_frequency: a pair must occur this often to be merged.
    """
    tk = _tokenizers()
    from tokenizers import decoders, models, pre_tokenizers, trainers
    minimum = 256 + len(SPECIAL_TOKENS)
    if int(vocab_size) < minimum:
        raise ValueError(f"vocab_size={vocab_size} is too small: byte-level BPE needs at least {minimum} "
                         f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens)")
    tokenizer = tk.Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=int(vocab_size), min_frequency=int(min_frequency),
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=show_progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_iter_texts(sources), trainer=trainer)
    return CodeTokenizer(tokenizer)
