"""The tree, defined once and without FUSE: each kind of path is a class (levels/vfs/*.py)
with its operations and their errno contract in its docstring; `resolve` walks a path to
its entry. fsops only maps inodes and handles onto it (README, design notes)."""

from levels.vfs.circuits import cached_across_change
from levels.vfs.entry import (
    Attrs,
    ChangeClock,
    Content,
    Dir,
    Entry,
    NewFile,
    RangeReader,
    Uniform,
    in_xattr_namespace,
    listed_from,
)
from levels.vfs.tree import directory_at, rename, resolve, subject_of

__all__ = ["Attrs", "ChangeClock", "Content", "Dir", "Entry", "NewFile", "RangeReader",
           "Uniform", "cached_across_change", "directory_at", "in_xattr_namespace",
           "listed_from", "rename", "resolve", "subject_of"]
