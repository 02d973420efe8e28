"""Merkle trees as RFC 9162 (Certificate Transparency 2.0) defines them: tree head, inclusion
proof, and its verification. Leaves are event hashes. Pure; no I/O."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(size: int) -> int:
    """The largest power of two smaller than ``size`` (size >= 2)."""
    return 1 << ((size - 1).bit_length() - 1)


class MerkleTree:
    """A tree over fixed leaves; subtree heads are computed once, so many proofs stay cheap."""

    def __init__(self, leaves: Sequence[bytes]) -> None:
        self._hashes = [leaf_hash(leaf) for leaf in leaves]
        self._heads: dict[tuple[int, int], bytes] = {}

    @property
    def size(self) -> int:
        return len(self._hashes)

    def _head(self, low: int, high: int) -> bytes:
        """MTH of leaves low..high-1."""
        if high - low == 1:
            return self._hashes[low]
        head = self._heads.get((low, high))
        if head is None:
            middle = low + _split(high - low)
            head = node_hash(self._head(low, middle), self._head(middle, high))
            self._heads[(low, high)] = head
        return head

    def root(self) -> bytes:
        """MTH(D[n]); the empty tree's head is SHA-256 of nothing."""
        return self._head(0, self.size) if self._hashes else hashlib.sha256(b"").digest()

    def path(self, index: int) -> list[bytes]:
        """PATH(m, D[n]): sibling hashes from leaf ``index`` up to the root."""
        if not 0 <= index < self.size:
            raise ValueError("leaf index out of range")
        siblings: list[bytes] = []
        low, high = 0, self.size
        while high - low > 1:
            middle = low + _split(high - low)
            if index < middle:
                siblings.append(self._head(middle, high))
                high = middle
            else:
                siblings.append(self._head(low, middle))
                low = middle
        siblings.reverse()  # collected root-down; proofs run leaf-up
        return siblings


def tree_root(leaves: Sequence[bytes]) -> bytes:
    return MerkleTree(leaves).root()


def verify_inclusion(index: int, size: int, leaf: bytes, path: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2."""
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    result = leaf_hash(leaf)
    for sibling in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            result = node_hash(sibling, result)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            result = node_hash(result, sibling)
        fn >>= 1
        sn >>= 1
    return sn == 0 and result == root
