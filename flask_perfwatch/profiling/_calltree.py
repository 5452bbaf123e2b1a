"""The call tree of one sampled request: sampled stacks in, frame records out.

A node is one stack entry: a code object and the line it was at, below its
parent's entry. Each sample adds its stack (root first) and the seconds it
stands for to the leaf's :attr:`Node.time`; a tree therefore holds every
distinct stack once, however many samples hit it, and its size is capped
(:attr:`CallTree.max_nodes`), so memory does not grow with a request's
duration. :func:`records` walks a tree into ``(stack of labels, seconds)``
pairs, the shape of pyinstrument's frame records; what a label looks like is
the caller's business (see :mod:`._session`).

A leaf frame that is waiting inside a call into C (``time.sleep``, a
socket's ``recv``, a driver's ``execute``) may get one more entry below its
own: its waiting line (:data:`WAIT`), so that the wait shows as the line that
waits rather than as the function's own time. Which samples wait is the
engine's business (see :mod:`.sampler`); :func:`wait_times` sums them.

Only the sampler thread builds and reads a tree while its request runs; once
the request is over (or a copy has been taken, :meth:`CallTree.copy`) the tree
is frozen: nothing changes it again, so the delivery thread may walk it
without a lock.

This module knows frames and code objects, not pyinstrument, asgiref or the
engine.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Final, TypeAlias

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from types import CodeType, FrameType


class _Leaf(enum.Enum):
    AWAIT = "[await]"
    WAIT = "[wait]"


#: Stands for pyinstrument's ``[await]`` leaf in a sampled stack: the time a
#: coroutine spent suspended (put there by :mod:`._asyncstack`). Its node has
#: no code object and the key :data:`AWAIT_KEY`.
AWAIT: Final = _Leaf.AWAIT

#: The child key of the ``[await]`` leaf; never equal to a :func:`node_key`
#: (those are never negative).
AWAIT_KEY: Final = -1

#: Stands, as the leaf of a sampled stack, for the line at which the frame
#: below it waits in a call (see the module doc). Its node holds that frame's
#: code object, and the key :func:`wait_key` of that frame's node, which
#: holds the line.
WAIT: Final = _Leaf.WAIT

#: An entry of a sampled stack: a frame, or :data:`AWAIT` or :data:`WAIT`
#: (only as the leaf).
StackEntry: TypeAlias = "FrameType | _Leaf"
#: A sampled stack, leaf first.
Stack: TypeAlias = "Sequence[StackEntry]"

# A child key packs ``id(code)`` and the line into one int: an int is cheaper to
# hash, compare and keep than a ``(code, line)`` tuple, and a tree is built
# under the GIL on the sampler thread, where every microsecond is taken from
# the requests. The line takes the low LINE_BITS bits; ``id(code)`` the rest.
#: Bits of a child key that hold the line number (lines are kept modulo 2**16).
LINE_BITS: Final = 16
#: The line bits of a child key: ``key & LINE_MASK`` is its (wrapped) line.
LINE_MASK: Final = (1 << LINE_BITS) - 1


def node_key(code: CodeType, lineno: int | None) -> int:
    """The key, among its siblings, of the entry for ``code`` at ``lineno``.

    Unique per (code object, line): ``id(code)`` cannot be reused while the
    tree lives, because every node keeps its code object. A line above 65535
    shares its key (and its reported line) with the one 65536 lines before it;
    a missing line (``None``) is 0. :meth:`CallTree.add` computes the same
    value inline (a call per frame per sample would be measurable)."""
    return (id(code) << LINE_BITS) | ((lineno or 0) & LINE_MASK)


def key_lineno(key: int) -> int:
    """The line number packed into a :func:`node_key` (0 when unknown)."""
    return key & LINE_MASK


def wait_key(key: int) -> int:
    """The child key of the waiting line below the entry of key ``key`` (a
    :func:`node_key`): below :data:`AWAIT_KEY`, so never equal to either, and
    one per entry (an entry is one line). ``wait_key(wait_key(k)) == k``."""
    return -2 - key


class Node:
    """One stack entry: ``code`` (None for the root and for the ``[await]``
    leaf; the waiting frame's for a waiting line), its ``key`` among its
    siblings (:func:`node_key`, which holds the line; :data:`AWAIT_KEY`;
    :func:`wait_key`), the seconds sampled with this entry as the leaf
    (``time``), and the entries called from it (``children``, None until it
    has any), by key."""

    __slots__ = ("children", "code", "key", "time")

    def __init__(self, code: CodeType | None, key: int = 0) -> None:
        self.code = code
        self.key = key
        self.time = 0.0
        self.children: dict[int, Node] | None = None


class CallTree:
    """A request's sampled stacks, at most ``max_nodes`` distinct entries.

    ``nodes`` counts the entries; ``truncated`` the seconds of samples whose
    stack needed a new entry past the cap (each was counted in the deepest
    entry that already existed, its caller)."""

    __slots__ = ("max_nodes", "nodes", "root", "truncated")

    def __init__(self, max_nodes: int) -> None:
        self.root = Node(None)
        self.max_nodes = max_nodes
        self.nodes = 0
        self.truncated = 0.0

    def add(self, stack: Stack, weight: float) -> None:
        """Count ``weight`` seconds for ``stack`` (leaf first)."""
        self.add_below(self.root, stack, weight)

    def add_below(self, parent: Node, stack: Stack, weight: float) -> list[Node] | None:
        """Count ``weight`` seconds for ``stack`` (leaf first) called from
        ``parent``'s entry; return the nodes of ``stack``, root first, so that
        a caller may start the next sample of the same stack from one of them.
        None when the stack did not fit under the cap (the seconds then count
        in the deepest entry that exists)."""
        node = parent
        nodes: list[Node] = []
        for i in range(len(stack) - 1, -1, -1):
            f = stack[i]
            code: CodeType | None
            if f is AWAIT:
                code = None
                key = AWAIT_KEY
            elif f is WAIT:  # the line of the frame below (never the root)
                code = node.code
                key = -2 - node.key  # wait_key()
            else:
                code = f.f_code
                key = (id(code) << LINE_BITS) | ((f.f_lineno or 0) & LINE_MASK)  # node_key()
            children = node.children
            if children is None:
                children = node.children = {}
            child = children.get(key)
            if child is None:
                if self.nodes >= self.max_nodes:
                    self.truncated += weight
                    node.time += weight
                    return None
                child = children[key] = Node(code, key)
                self.nodes += 1
            node = child
            nodes.append(node)
        node.time += weight
        return nodes

    def copy(self) -> CallTree:
        """A deep copy, which later samples do not change (a hung request's
        partial profile)."""
        tree = CallTree(self.max_nodes)
        tree.nodes = self.nodes
        tree.truncated = self.truncated
        # iterative: a tree may be deeper than the recursion limit allows
        pending = [(self.root, tree.root)]
        while pending:
            source, target = pending.pop()
            target.time = source.time
            children = source.children
            if children is not None:
                copies: dict[int, Node] = {}
                for key, child in children.items():
                    copies[key] = twin = Node(child.code, key)
                    pending.append((child, twin))
                target.children = copies
        return tree


def records(root: Node, label: Callable[[CodeType, int], str], await_label: str, *,
            wait_label: Callable[[CodeType, int], str] | None = None,
            ) -> Iterator[tuple[list[str], float]]:
    """Depth first, each entry before the entries it called (in first-sampled
    order): the stack of labels root first, and the seconds of every entry
    that was a sampled leaf. ``label(code, line)`` names an entry (called once
    per distinct entry), ``await_label`` the ``[await]`` leaf and
    ``wait_label(code, line)`` a waiting line (``label`` if not given). The
    root's own time (samples with no stack) is left out: a record needs a
    frame."""
    if wait_label is None:
        wait_label = label
    cache: dict[int, str] = {}
    path: list[str] = []
    # one iterator per open entry: len(pending) == len(path) + 1
    pending = [iter(root.children.items())] if root.children else []
    while pending:
        for key, child in pending[-1]:
            code = child.code
            if code is None:
                info = await_label
            elif key < AWAIT_KEY:  # a waiting line: wait_key() of its frame's key
                info = cache.get(key) or cache.setdefault(
                    key, wait_label(code, key_lineno(-2 - key)))
            else:
                info = cache.get(key) or cache.setdefault(key, label(code, key_lineno(key)))
            path.append(info)
            if child.time > 0:
                yield list(path), child.time
            if child.children:
                pending.append(iter(child.children.items()))
                break
            path.pop()
        else:
            pending.pop()
            if path:
                path.pop()


def wait_times(root: Node) -> dict[tuple[CodeType, int], float]:
    """The seconds sampled at each waiting line, summed over every call path
    that reached it: ``(code, line) -> seconds`` (lines with none left out)."""
    times: dict[tuple[CodeType, int], float] = {}
    pending = [root]
    while pending:
        children = pending.pop().children
        if not children:
            continue
        for key, child in children.items():
            if key < AWAIT_KEY:
                code = child.code
                if code is not None and child.time > 0:
                    where = (code, key_lineno(-2 - key))
                    times[where] = times.get(where, 0.0) + child.time
            elif child.children:
                pending.append(child)
    return times


__all__ = ["AWAIT", "AWAIT_KEY", "LINE_BITS", "LINE_MASK", "WAIT", "CallTree", "Node", "Stack",
           "StackEntry", "key_lineno", "node_key", "records", "wait_key", "wait_times"]
