"""Prefix structure from block hashes: best parent and shared tokens, with the partial-block rule.

Public traces (Weka/kv-cache-tester, Mooncake) do not carry tokens, only one hash per block of
``block_size`` tokens, chained so that equal ids mean equal prefixes. A block comparison can only
say how many *whole blocks* two prompts share. The tail of the earlier prompt that does not fill a
block is blurred::

    earlier prompt   |b0|b1|b2|b3|..tail..|               n_prompt = 4*B + 37
    later prompt     |b0|b1|b2|b3|..tail..+ new tokens ...|
    blocks say       shared >= 4*B tokens  (its block 4 hashes tail+new: a new id)
    append rule      shared  = 4*B + 37    (agent prompts only append: the tail is kept)

For a hybrid/recurrent model the difference matters: with 4*B shared the server must roll back
37 tokens, which needs a checkpoint at or before 4*B (spec §2.2); with the whole earlier prompt
shared the checkpoint the server takes at T-4 (spec §2.3) is usable. ``PartialBlockRule`` makes
the choice explicit; :class:`BlockIndex` applies it only where the earlier prompt is the tip of
its branch.

Sources differ on the tail: kv-cache-tester hashes whole blocks only (``len(hash_ids) ==
n_prompt // 64``); Mooncake also hashes the partial last block (``len == ceil(n_prompt / 512)``),
which then gets a new id when the prompt grows. Both are covered by the same condition: the later
prompt shares every *full* block of the earlier one (``n_blocks >= n_prompt_parent // B``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from ..trace import PrefixIndex


class PartialBlockRule(str, Enum):
    """How to count the earlier prompt's partial last block when every full block is shared."""

    APPEND = "append"   # the earlier prompt is a prefix of the later one (agents only append)
    STRICT = "strict"   # only what the hashes prove: whole shared blocks


def shared_tokens(n_blocks: int, block_size: int, n_prompt: int, n_prompt_parent: int,
                  rule: PartialBlockRule) -> int:
    """Tokens a prompt shares with an earlier one whose leading ``n_blocks`` block hashes it repeats.

    Assumes the earlier prompt is the tip of its branch (see :class:`BlockIndex`). Capped at both
    prompt lengths: a shared partial block (same hash, Mooncake) proves equal content, no more.
    """
    n = min(n_blocks * block_size, n_prompt, n_prompt_parent)
    if rule is PartialBlockRule.APPEND and n_blocks > 0 and n_blocks >= n_prompt_parent // block_size:
        # Every full block of the earlier prompt is shared, so the only difference the hashes
        # can see is its unfilled tail (< block_size tokens): an agent prompt only appends.
        n = min(n_prompt_parent, n_prompt)
    return n


@dataclass(frozen=True, slots=True)
class Match:
    """The best earlier prompt for a new one, and what it shares."""

    parent: int          # request id, -1 when no earlier prompt shares a block
    n_blocks: int        # leading block hashes shared
    n_shared: int        # tokens shared under the index's rule
    n_strict: int        # tokens the hashes prove (whole blocks, capped at both lengths)
    continues: bool      # the new prompt extends the parent's (up to its blurred tail)


_MAX_TIP_CHILDREN = 16   # more branches than this after a node: a shared prefix, never a tip


class BlockIndex(PrefixIndex):
    """A PrefixIndex over block hashes that turns block matches into token counts.

    The append rule needs more than "every full block of the earlier prompt is shared": the
    earlier prompt must also be the *tip of its branch*, i.e. no other prompt has gone past its
    last full block yet (others may end there: earlier turns of the same chat that grew inside
    one block, each with its own partial-block hash). Otherwise the match is a common prefix (a
    system prompt, the first block of every Mooncake request, a sub-agent's tool definitions)
    that the earlier prompt happens to end just after, and its tail is its own text::

        tip:     P = |sys|a1|a2|tail|          later |sys|a1|a2|tail+new...|   -> append
        not tip: P = |sys|tail|   Q = |sys|b1|..  later |sys|c1|...|             -> strict
    """

    def __init__(self, block_size: int, rule: PartialBlockRule) -> None:
        super().__init__()
        self.block_size = block_size
        self.rule = rule
        self._sizes: dict[int, tuple[int, int]] = {}   # id -> (n_prompt, number of hashes)

    @property
    def n_indexed(self) -> int:
        """Number of prompts added."""
        return len(self._sizes)

    def add_prompt(self, request_id: int, blocks: Sequence, n_prompt: int) -> None:
        """Insert a prompt's block hashes; ``n_prompt`` is its length in tokens."""
        self.add(request_id, blocks)
        self._sizes[request_id] = (n_prompt, len(blocks))

    def insert(self, request_id: int, blocks: Sequence, n_prompt: int) -> Match:
        """``best`` for a new prompt, then ``add_prompt`` it, in one walk: what the importers do per
        request (the matched nodes are marked as the new prompt's, the rest are built)."""
        path = self._path(blocks)
        m = self._match(path, n_prompt)
        for node in path:
            node[None] = request_id
        node = path[-1] if path else self._root
        for i in range(len(path), len(blocks)):
            nxt = {None: request_id}
            node[blocks[i]] = nxt
            node = nxt
        self._sizes[request_id] = (n_prompt, len(blocks))
        return m

    def n_prompt(self, request_id: int) -> int:
        """Length of an indexed prompt."""
        return self._sizes[request_id][0]

    def _is_tip(self, node: dict, depth: int) -> bool:
        # Every other prompt through this node must end here too: its next block is its own
        # partial tail (a leaf, Mooncake hashes it), not a full block leading further.
        if len(node) - 1 > _MAX_TIP_CHILDREN:
            return False   # a hub: a prefix many prompts share (system prompt, tool definitions)
        for key, child in node.items():
            if key is None:
                continue
            if len(child) != 1 or self._sizes[child[None]][0] // self.block_size != depth:
                return False
        return True

    def best(self, blocks: Sequence, n_prompt: int) -> Match:
        """The earlier prompt sharing the most leading blocks (the latest on ties) and the tokens shared."""
        return self._match(self._path(blocks), n_prompt)

    def _path(self, blocks: Sequence) -> list[dict]:
        """The trie nodes of the leading blocks an earlier prompt shares, root excluded."""
        node: dict | None = self._root
        path = []
        for b in blocks:
            node = node.get(b)
            if node is None:
                break
            path.append(node)
        return path

    def _match(self, path: list[dict], n_prompt: int) -> Match:
        depth = len(path)
        if depth == 0:
            return Match(-1, 0, 0, 0, False)
        node = path[-1]
        parent = node[None]
        n_p = self._sizes[parent][0]
        bs = self.block_size
        strict = min(depth * bs, n_prompt, n_p)
        n_full = n_p // bs
        if depth > n_full:
            # Even the parent's partial block matched (same hash, same content): nothing blurred.
            return Match(parent, depth, strict, strict, True)
        tip = depth == n_full and self._is_tip(node, depth)
        n = shared_tokens(depth, bs, n_prompt, n_p, self.rule) if tip else strict
        return Match(parent, depth, n, strict, tip)
