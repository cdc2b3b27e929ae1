"""GPT-2's byte-level BPE core: the byte <-> unicode table, the pre-tokenization pattern and the merge loop.

Framework-neutral and dependency-light (stdlib + `regex`); `gpt2_core.tokenization_api` builds the user API on it.

References:
    - OpenAI, gpt-2 `src/encoder.py`: the pre-tokenization pattern, `bytes_to_unicode` and the BPE merge loop.
    - openai/tiktoken: the merge rule used here (merge the lowest-ranked adjacent pair, leftmost first).
    - huggingface/tokenizers `models/bpe` and `pre_tokenizers/byte_level`: characters missing from the vocabulary
      become `unk_token` (or are dropped without one), and the character offsets of byte-level tokens.
"""

from __future__ import annotations

import array
import functools
import heapq
from collections.abc import Mapping, Sequence

import numpy as np
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
# Pieces longer than this (bytes) are merged with the heap (`_bpe_long`), shorter ones with a plain loop.
_HEAP_MIN_BYTES = 64
# Pieces longer than this (bytes) are merged in NumPy segments of _SEGMENT_BYTES (`_bpe_segmented`).
_SEGMENTED_MIN_BYTES = 4096
_SEGMENT_BYTES = 128
# Stands for a byte whose base token is not in the vocabulary; it never merges (as in `tokenizers`' BPE).
UNKNOWN_BYTE = -1


def _hash_slots(keys: np.ndarray, bits: int) -> np.ndarray:
    """Fibonacci hashing of int64 keys to `bits`-bit slots."""
    return ((keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - bits)).astype(np.int64)


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
        self._pair_table_cache: tuple[dict[int, int], list[int], int] | None = None
        self._np_tables_cache: tuple[np.ndarray, np.ndarray, np.ndarray, int, int] | None = None
        self._token_base: dict[int, list[int]] | None = None
        self._compatible_cache: dict[tuple[int, int], bool] = {}

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

        Short pieces (almost all of real text) use a plain loop over the pairs; longer ones a heap of candidate
        pairs over a linked list, O(n log n) (`_bpe_long`); pieces over 4 KB (a long run of letters or
        punctuation, e.g. text without spaces) are merged in NumPy segments whose seams are then mended
        (`_bpe_segmented`), about linear in time and memory. All give the same ids. Bytes without a base token
        come back as UNKNOWN_BYTE, one per byte.
        """
        byte_ids = self.byte_ids
        ids = [byte_ids[b] for b in piece.encode("utf-8")]
        if len(ids) < 2:
            return tuple(ids)
        if len(ids) > _SEGMENTED_MIN_BYTES and self.has_all_bytes:
            return tuple(self._bpe_segmented(ids))
        return tuple(self._merge_ids(ids))

    def _merge_ids(self, ids: list[int]) -> list[int]:
        """BPE-merge base-token ids: the plain loop for short pieces, the heap for longer ones."""
        if len(ids) > _HEAP_MIN_BYTES:
            return list(self._bpe_long(ids))
        ids = list(ids)
        table = self.merge_table
        while True:
            best = None
            for i in range(len(ids) - 1):
                merge = table.get((ids[i], ids[i + 1]))
                if merge is not None and (best is None or merge[0] < best[0]):
                    best, at = merge, i
            if best is None:
                return ids
            ids[at : at + 2] = [best[1]]
            if len(ids) == 1:
                return ids

    def _bpe_long(self, ids: list[int]) -> tuple[int, ...]:
        # Memory per byte: the ids and the links in compact arrays, heap entries as single ints
        # (rank << shift | position), so a 10 MB word needs well under 1 GB.
        n = len(ids)
        pair_rank, merged_of_rank, width = self._pair_table()
        shift = n.bit_length()
        mask = (1 << shift) - 1
        ids_arr = array.array("q", ids)
        nxt = array.array("q", range(1, n + 1))
        prv = array.array("q", range(-1, n - 1))
        heap = []
        previous = ids[0]
        for i in range(1, n):
            current = ids[i]
            rank = pair_rank.get(previous * width + current)
            if rank is not None:
                heap.append(rank << shift | (i - 1))
            previous = current
        del ids
        heapq.heapify(heap)
        pop, push = heapq.heappop, heapq.heappush
        while heap:
            entry = pop(heap)
            i = entry & mask
            j = nxt[i]
            if j >= n or j < 0:
                continue  # i was merged away (nxt -1) or is the last token
            rank = entry >> shift
            if pair_rank.get(ids_arr[i] * width + ids_arr[j]) != rank:
                continue  # stale: a neighbour was merged since this entry was pushed
            merged = merged_of_rank[rank]
            ids_arr[i] = merged
            k = nxt[j]
            nxt[i] = k
            nxt[j] = -1
            if k < n:
                prv[k] = i
                rank = pair_rank.get(merged * width + ids_arr[k])
                if rank is not None:
                    push(heap, rank << shift | i)
            h = prv[i]
            if h >= 0:
                rank = pair_rank.get(ids_arr[h] * width + merged)
                if rank is not None:
                    push(heap, rank << shift | h)
        out = []
        i = 0
        while i < n:
            out.append(ids_arr[i])
            i = nxt[i]
        return tuple(out)

    def _bpe_segmented(self, ids: list[int]) -> list[int]:
        """BPE of a long piece in NumPy: merge fixed segments independently, all at once, then mend the seams.

        Each segment of _SEGMENT_BYTES runs OpenAI's loop (merge every occurrence of its lowest-ranked pair, the
        leftmost first when they overlap), one step per round for all segments together, so the rounds are at most
        the segment length. A token sequence is BPE's output exactly when every two adjacent tokens are
        "compatible" (BPE of their bytes gives back those two tokens; the lemma behind GitHub's `bpe` crate,
        van Antwerpen and Neubeck 2024). Inside a segment that holds; at a seam that does not hold, a window of
        tokens around it is merged again, growing until both of its edges hold. Linear time and memory in practice.
        """
        _, _, merged_of_rank, width, _ = self._np_tables()
        tok = np.asarray(ids, dtype=np.int64)
        seg = np.arange(len(tok), dtype=np.int64) // _SEGMENT_BYTES
        n_seg = int(seg[-1]) + 1
        never = np.iinfo(np.int64).max
        done_tok: list[np.ndarray] = []
        done_seg: list[np.ndarray] = []

        def pair_ranks(at: np.ndarray) -> np.ndarray:  # rank of the pairs (tok[at], tok[at + 1]) within a segment
            rank = self._lookup_ranks(tok[at] * width + tok[at + 1], never)
            rank[seg[at] != seg[at + 1]] = never
            return rank

        rank = pair_ranks(np.arange(len(tok) - 1))
        while len(tok) > 1:
            seg_min = np.full(n_seg, never, dtype=np.int64)
            np.minimum.at(seg_min, seg[:-1], rank)
            finished = seg_min[seg] == never
            if finished.any():  # segments with nothing left to merge leave the working set
                done_tok.append(tok[finished])
                done_seg.append(seg[finished])
                kept = np.flatnonzero(~finished)
                if len(kept) < 2:
                    tok, seg = tok[kept], seg[kept]
                    break
                rank = rank[kept[:-1]]  # a kept token's next kept token is its old neighbour or in another segment
                tok, seg = tok[kept], seg[kept]
            candidate = np.flatnonzero(rank == seg_min[seg[:-1]])
            # Overlapping occurrences (a run of consecutive positions, e.g. "aaa"): the 1st, 3rd, ... of each run.
            n = np.arange(len(candidate))
            run_start = np.ones(len(candidate), dtype=bool)
            run_start[1:] = candidate[1:] != candidate[:-1] + 1
            first = np.maximum.accumulate(np.where(run_start, n, 0))
            chosen = candidate[(n - first) % 2 == 0]
            tok[chosen] = merged_of_rank[rank[chosen]]
            keep = np.ones(len(tok), dtype=bool)
            keep[chosen + 1] = False
            rank = rank[np.flatnonzero(keep)[:-1]]
            tok, seg = tok[keep], seg[keep]
            # Only the pairs next to a merged token changed: the merged tokens now sit at chosen - 0, 1, 2, ...
            merged_at = chosen - np.arange(len(chosen))
            touched = np.union1d(merged_at[merged_at < len(tok) - 1], merged_at[merged_at >= 1] - 1)
            if len(touched):
                rank[touched] = pair_ranks(touched)
        done_tok.append(tok)
        done_seg.append(seg)
        all_seg = np.concatenate(done_seg)
        order = np.argsort(all_seg, kind="stable")
        all_tok = np.concatenate(done_tok)[order].tolist()
        cuts = (np.flatnonzero(np.diff(all_seg[order])) + 1).tolist()
        # Mend the seams, left to right.
        compatible = self._compatible
        bounds = [0, *cuts, len(all_tok)]
        out = all_tok[bounds[0] : bounds[1]]
        for start, end in zip(bounds[1:-1], bounds[2:]):
            right = all_tok[start:end]
            if compatible(out[-1], right[0]):
                out.extend(right)
                continue
            k = 1
            while True:
                k_left, k_right = min(k, len(out)), min(k, len(right))
                window = [b for t in out[len(out) - k_left :] + right[:k_right] for b in self._base_ids(t)]
                mended = self._merge_ids(window)
                if (k_left == len(out) or compatible(out[-k_left - 1], mended[0])) and (
                    k_right == len(right) or compatible(mended[-1], right[k_right])
                ):
                    del out[len(out) - k_left :]
                    out.extend(mended)
                    out.extend(right[k_right:])
                    break
                k *= 2
        return out

    def _compatible(self, left: int, right: int) -> bool:
        """Whether BPE of the bytes of `left` followed by those of `right` gives back exactly (left, right)."""
        pair = (left, right)
        known = self._compatible_cache.get(pair)
        if known is None:
            known = self._merge_ids(self._base_ids(left) + self._base_ids(right)) == [left, right]
            if len(self._compatible_cache) >= _CACHE_MAX_ENTRIES:
                self._compatible_cache.clear()
            self._compatible_cache[pair] = known
        return known

    def _base_ids(self, token_id: int) -> list[int]:
        """The base-token (byte) ids a token is made of."""
        if self._token_base is None:
            byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
            byte_ids = self.byte_ids
            token_base: dict[int, list[int]] = {}
            for t, i in self._encoder.items():
                base: list[int] = []
                for c in t:  # a byte-level character is its byte; any other character its UTF-8 bytes
                    base.extend([byte_ids[byte_decoder[c]]] if c in byte_decoder else [byte_ids[b] for b in c.encode()])
                token_base[i] = base
            self._token_base = token_base
        return self._token_base[token_id]

    def _np_tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
        """The merge table as an open-addressing hash table in NumPy: slot keys (left * width + right, -1 when
        empty), slot ranks, rank -> merged id, the key width and the hash shift. Built on first use."""
        if self._np_tables_cache is None:
            pair_rank, merged_of_rank, width = self._pair_table()
            bits = max(4, (2 * len(pair_rank)).bit_length() + 1)  # load factor <= 1/4: short probe runs
            size = 1 << bits
            slot_keys = np.full(size, -1, dtype=np.int64)
            slot_ranks = np.zeros(size, dtype=np.int64)
            keys = np.fromiter(pair_rank.keys(), dtype=np.int64, count=len(pair_rank))
            homes = _hash_slots(keys, bits).tolist()
            for key, home, rank in zip(keys.tolist(), homes, pair_rank.values()):
                while slot_keys[home] != -1:
                    home = (home + 1) & (size - 1)
                slot_keys[home], slot_ranks[home] = key, rank
            merged = np.asarray(merged_of_rank or [0], dtype=np.int64)
            self._np_tables_cache = (slot_keys, slot_ranks, merged, width, bits)
        return self._np_tables_cache

    def _lookup_ranks(self, key: np.ndarray, never: int) -> np.ndarray:
        """Rank of each pair key, `never` where the pair has no merge (vectorized linear probing)."""
        slot_keys, slot_ranks, _, _, bits = self._np_tables()
        mask = (1 << bits) - 1
        rank = np.full(len(key), never, dtype=np.int64)
        slot = _hash_slots(key, bits)
        pending = np.arange(len(key))
        while len(pending):
            found = slot_keys[slot]
            hit = found == key[pending]
            rank[pending[hit]] = slot_ranks[slot[hit]]
            go_on = ~hit & (found != -1)
            pending, slot = pending[go_on], (slot[go_on] + 1) & mask
        return rank

    def _pair_table(self) -> tuple[dict[int, int], list[int], int]:
        """`merge_table` keyed by one int (left * width + right) -> rank, and rank -> merged id; built on first use."""
        if self._pair_table_cache is None:
            width = max(max(self._encoder.values(), default=0), 255) + 2  # ids and UNKNOWN_BYTE (-1 -> never found)
            merged_of_rank = [0] * (max((r for r, _ in self.merge_table.values()), default=-1) + 1)
            pair_rank = {}
            for (a, b), (rank, merged) in self.merge_table.items():
                pair_rank[a * width + b] = rank
                merged_of_rank[rank] = merged
            self._pair_table_cache = (pair_rank, merged_of_rank, width)
        return self._pair_table_cache

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
