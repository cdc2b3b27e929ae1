"""GPT-2's byte-level BPE core: the byte <-> unicode table, the pre-tokenization pattern and the merge loop.

Framework-neutral and dependency-light (stdlib + `regex`); `gpt2_core.tokenization_api` builds the user API on it.

References:
    - OpenAI, gpt-2 `src/encoder.py`: the pre-tokenization pattern, `bytes_to_unicode` and the BPE merge loop.
    - openai/tiktoken: the merge rule used here (merge the lowest-ranked adjacent pair, leftmost first).
    - huggingface/tokenizers `models/bpe` and `pre_tokenizers/byte_level`: characters missing from the vocabulary
      become `unk_token` (or are dropped without one), and the character offsets of byte-level tokens.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Mapping, Sequence

import regex

ENDOFTEXT = "<|endoftext|>"

# OpenAI's pre-tokenization pattern (gpt-2 src/encoder.py), unchanged.
GPT2_PRETOKENIZE_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Letters and numbers that Unicode 17.0 added, as inclusive code point ranges. tiktoken 0.14 (Rust `regex`) and
# `tokenizers` 0.23 (Oniguruma) classify characters by Unicode 16.0, where these are unassigned and so match
# `[^\s\p{L}\p{N}]`; `regex` releases with Unicode 17.0 tables (2026) call them letters or numbers, which would give
# other ids for text containing them. Taking them out of \p{L} and \p{N} pins the pure-Python tokenizer to Unicode
# 16.0 with any `regex` >= 2024.9.11 (the first release with Unicode 16.0). Found by pre-tokenizing every code point
# with both libraries; tests/test_tokenization.py checks these ranges and their neighbours against `tokenizers`.
_UNICODE_17_LETTERS_AND_NUMBERS = (
    (0x00558, 0x00558), (0x0058B, 0x0058C), (0x0088F, 0x0088F), (0x00C5C, 0x00C5C), (0x00CDC, 0x00CDC),
    (0x0208F, 0x0208F), (0x0209D, 0x0209F), (0x0A7CE, 0x0A7CF), (0x0A7D2, 0x0A7D2), (0x0A7D4, 0x0A7D4),
    (0x0A7DD, 0x0A7DD), (0x0A7E2, 0x0A7E2), (0x0A7F1, 0x0A7F1), (0x0AB6C, 0x0AB6D), (0x107BB, 0x107BF),
    (0x10940, 0x10959), (0x10EC5, 0x10EC7), (0x10ED9, 0x10EEE), (0x11B0A, 0x11B0A), (0x11DB0, 0x11DDB),
    (0x11DE0, 0x11DE9), (0x11DF1, 0x11DF1), (0x1246F, 0x1246F), (0x12475, 0x1247F), (0x12550, 0x12686),
    (0x16EA0, 0x16EB8), (0x16EBB, 0x16ED3), (0x16FF2, 0x16FF6), (0x187F8, 0x187FF), (0x18CD6, 0x18CDA),
    (0x18D09, 0x18D20), (0x18D80, 0x18DF2), (0x18E00, 0x19191), (0x191A0, 0x191D2), (0x1B123, 0x1B128),
    (0x1B168, 0x1B168), (0x1D6A6, 0x1D6A6), (0x1DF1F, 0x1DF24), (0x1DF2B, 0x1DF81), (0x1DF90, 0x1DF96),
    (0x1DFCD, 0x1DFFF), (0x1E6C0, 0x1E6DE), (0x1E6E0, 0x1E6E2), (0x1E6E4, 0x1E6E5), (0x1E6E7, 0x1E6ED),
    (0x1E6F0, 0x1E6F4), (0x1E6FE, 0x1E6FF), (0x2B73A, 0x2B73F), (0x2B81E, 0x2B81E), (0x2CEA2, 0x2CEAD),
    (0x323B0, 0x33479), (0x3D000, 0x3FC3F),
)  # fmt: skip
_NEW_IN_UNICODE_17 = "".join(rf"\U{a:08X}-\U{b:08X}" for a, b in _UNICODE_17_LETTERS_AND_NUMBERS)
_LETTER = rf"[\p{{L}}--[{_NEW_IN_UNICODE_17}]]"
_NUMBER = rf"[\p{{N}}--[{_NEW_IN_UNICODE_17}]]"
# GPT2_PRETOKENIZE_PATTERN with those classes; (?V1) turns on `regex`'s set subtraction `--`.
_PRETOKENIZE_PATTERN_UNICODE_16 = (
    rf"(?V1)'s|'t|'re|'ve|'m|'ll|'d| ?{_LETTER}+| ?{_NUMBER}+| ?[^\s{_LETTER}{_NUMBER}]+|\s+(?!\S)|\s+"
)

@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Map every byte to a printable unicode character, as OpenAI's encoder does.

    Printable Latin-1 bytes map to themselves; the other 68 (control characters, space, NBSP, soft hyphen) map to
    U+0100 and up, so a BPE token is always a string without whitespace or control characters.

    Returns:
        A dict from byte value (0-255) to a one-character string. Do not mutate it; it is cached.
    """
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))



# Pre-tokens longer than this are not cached: they are rare and would let one input fill the cache.
_CACHE_MAX_PIECE_CHARS = 256
_CACHE_MAX_ENTRIES = 100_000
# Stands for a byte whose base token is not in the vocabulary; it never merges (as in `tokenizers`' BPE).
UNKNOWN_BYTE = -1


class BytePairEncoder:
    """The merge loop of byte-level BPE over one vocabulary: text -> ids, optionally with character offsets.

    Args:
        encoder: Token -> id of the BPE model (no added tokens).
        merges: The merges as pairs of token strings, in rank order; each pair and its result must be in `encoder`.
    """

    def __init__(self, encoder: Mapping[str, int], merges: Sequence[tuple[str, str]]) -> None:
        byte_encoder = bytes_to_unicode()
        self.pattern = regex.compile(_PRETOKENIZE_PATTERN_UNICODE_16)
        # A vocabulary may lack some of the 256 byte tokens (a small custom BPE): those bytes are UNKNOWN_BYTE.
        self.byte_ids = [encoder.get(byte_encoder[b], UNKNOWN_BYTE) for b in range(256)]
        self.has_all_bytes = UNKNOWN_BYTE not in self.byte_ids
        # (left id, right id) -> (rank, merged id); a pair listed twice keeps its lower rank.
        self.merge_table: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (a, b) in enumerate(merges):
            self.merge_table.setdefault((encoder[a], encoder[b]), (rank, encoder[a + b]))
        self._encoder = encoder
        self._token_nbytes: dict[int, int] | None = None
        self._cache: dict[str, tuple[int, ...]] = {}

    @property
    def token_nbytes(self) -> dict[int, int]:
        """Bytes per id, for offsets; built on first use (a non byte-level character counts as its UTF-8)."""
        if self._token_nbytes is None:
            byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
            self._token_nbytes = {
                i: sum(1 if c in byte_decoder else len(c.encode("utf-8")) for c in t) for t, i in self._encoder.items()
            }
        return self._token_nbytes

    def bpe(self, piece: str) -> tuple[int, ...]:
        """BPE-merge one pre-token: repeatedly merge the lowest-ranked adjacent pair, the leftmost on ties.

        A heap of candidate pairs over a linked list keeps this O(n log n), so a long run of letters or
        punctuation does not take quadratic time. Heap entries whose pair has changed since are skipped.
        Bytes without a base token come back as UNKNOWN_BYTE, one per byte.
        """
        byte_ids = self.byte_ids
        ids = [byte_ids[b] for b in piece.encode("utf-8")]
        n = len(ids)
        if n < 2:
            return tuple(ids)
        table = self.merge_table
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        alive = [True] * n
        heap = []
        for i in range(n - 1):
            merge = table.get((ids[i], ids[i + 1]))
            if merge is not None:
                heap.append((merge[0], i))
        heapq.heapify(heap)
        while heap:
            rank, i = heapq.heappop(heap)
            j = nxt[i]
            if not alive[i] or j >= n:
                continue
            merge = table.get((ids[i], ids[j]))
            if merge is None or merge[0] != rank:
                continue  # stale: a neighbour was merged since this entry was pushed
            ids[i] = merge[1]
            alive[j] = False
            k = nxt[i] = nxt[j]
            if k < n:
                prv[k] = i
                merge = table.get((ids[i], ids[k]))
                if merge is not None:
                    heapq.heappush(heap, (merge[0], i))
            h = prv[i]
            if h >= 0:
                merge = table.get((ids[h], ids[i]))
                if merge is not None:
                    heapq.heappush(heap, (merge[0], h))
        return tuple(ids[i] for i in range(n) if alive[i])

    def _cached_bpe(self, piece: str) -> tuple[int, ...]:
        cache = self._cache
        piece_ids = cache.get(piece)
        if piece_ids is None:
            piece_ids = self.bpe(piece)
            if len(piece) <= _CACHE_MAX_PIECE_CHARS:
                if len(cache) >= _CACHE_MAX_ENTRIES:
                    cache.clear()
                cache[piece] = piece_ids
        return piece_ids

    def encode(self, text: str, unk_id: int | None) -> list[int]:
        """Pre-tokenize and BPE-merge `text` (no added or special tokens); unknown bytes become `unk_id`, or are
        dropped when it is None (as `tokenizers` does without an unk token)."""
        ids: list[int] = []
        for piece in self.pattern.findall(text):
            ids.extend(self._cached_bpe(piece))
        if not self.has_all_bytes:
            ids = [unk_id if i == UNKNOWN_BYTE else i for i in ids if i != UNKNOWN_BYTE or unk_id is not None]
        return ids

    def encode_with_offsets(
        self, text: str, unk_id: int | None, base: int = 0, prefix_space: bool = False
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """`encode` plus the (start, end) character span of each id in the caller's text.

        `text` starts at character `base` of the caller's text. With `prefix_space`, `text` has one space put in
        front that is not in the caller's text: like `tokenizers`' ByteLevel, it is aligned to the first character.
        Spans follow `tokenizers`: a token covers the characters its bytes came from, so the tokens of one
        multi-byte character share that character's span.
        """
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        nbytes = self.token_nbytes
        for match in self.pattern.finditer(text):
            piece = match.group()
            start = match.start()
            # The character (in the caller's text) that each byte of the piece came from.
            owner: list[int] = []
            for j, ch in enumerate(piece):
                position = base + start + j - (1 if prefix_space else 0)
                owner.extend([max(position, base)] * len(ch.encode("utf-8")))
            k = 0
            for i in self._cached_bpe(piece):
                n = 1 if i == UNKNOWN_BYTE else nbytes[i]
                if i == UNKNOWN_BYTE:
                    if unk_id is None:
                        k += n
                        continue
                    i = unk_id
                ids.append(i)
                offsets.append((owner[k], owner[k + n - 1] + 1))
                k += n
        return ids, offsets
