"""How ddmq marks its Slurm jobs, so that it finds its own and never touches others'.

Every worker job ddmq submits carries two marks:

- the job name ``ddmq-<digest>``, ``<digest>`` the first 12 hex digits of the
  SHA-256 of the root's absolute path: ``squeue --name`` selects the jobs of
  one root in one call;
- the comment ``ddmq:<queue>:<root>``, the root percent-encoded (no spaces,
  ``=`` or ``|``, so that it survives ``squeue`` and ``scontrol`` output
  whole): it says which queue the workers serve, and confirms the root, for
  a job of the user's own that happens to have the same name is not ours.

A job is ours when both match and it belongs to this user (``squeue -u``).
The root is taken as an absolute path, as :class:`ddmq.Broker` takes it: the
same folder reached by two different paths (a symbolic link) makes two tags.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from urllib.parse import quote, unquote

from ..layout import check_queue_name

__all__ = ["NAME_PREFIX", "COMMENT_PREFIX", "JobTag", "parse_comment"]

NAME_PREFIX = "ddmq-"
COMMENT_PREFIX = "ddmq:"


@dataclass(frozen=True)
class JobTag:
    """The marks of the worker jobs of ``root`` (all its queues, or ``queue`` only)."""

    root: str
    queue: str | None = None

    def __post_init__(self) -> None:
        root = os.path.abspath(os.fspath(self.root))
        if "\n" in root or "\0" in root:
            raise ValueError(f"a root for Slurm jobs cannot hold a newline or NUL: {root!r}")
        object.__setattr__(self, "root", root)
        if self.queue is not None:
            check_queue_name(self.queue)

    @property
    def name(self) -> str:
        """The job name of the root's worker jobs."""
        return NAME_PREFIX + hashlib.sha256(self.root.encode("utf-8", "surrogateescape")).hexdigest()[:12]

    @property
    def comment(self) -> str:
        """The job comment of the workers of the tag's queue (which must be set)."""
        if self.queue is None:
            raise ValueError("the comment of a job names its queue: JobTag needs one")
        return f"{COMMENT_PREFIX}{self.queue}:{quote(self.root, safe='/', errors='surrogateescape')}"

    def owns(self, name: str, comment: str) -> bool:
        """True if a job of this user with ``name`` and ``comment`` is one of
        ours: same root, and same queue when the tag names one."""
        parsed = parse_comment(comment)
        if name != self.name or parsed is None:
            return False
        queue, root = parsed
        return root == self.root and (self.queue is None or queue == self.queue)


def parse_comment(comment: str) -> tuple[str, str] | None:
    """(queue, root) of a ddmq job comment; None if it is not one."""
    if not comment.startswith(COMMENT_PREFIX):
        return None
    queue, sep, root = comment[len(COMMENT_PREFIX):].partition(":")
    if not sep or not queue or not root:
        return None
    return queue, unquote(root, errors='surrogateescape')
