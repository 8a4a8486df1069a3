"""The /workflows tree:

    /workflows/<name>.yaml       write a workflow (validated at close) and it starts
    /workflows/<name>/status     progress, one line per stage
    /workflows/<name>/result.json
    /workflows/<name>/ctl        resume | cancel
"""

import functools
import time

from fsops import nodes
from fsops.nodes import Node
from levels.coordinator import check_definition_size
from levels.errors import NotFound
from levels.fabric import Fabric

Path = tuple[str, ...]
WORKFLOWS = "workflows"
SUFFIX = ".yaml"
_STARTED_NS = time.time_ns()


def definition_name(leaf: str) -> str | None:
    return leaf[: -len(SUFFIX)] if leaf.endswith(SUFFIX) and len(leaf) > len(SUFFIX) else None


def submit_target(fabric: Fabric, path: Path) -> nodes.Commit | None:
    """Writing /workflows/<name>.yaml submits the workflow; None for other paths."""
    name = definition_name(path[1]) if len(path) == 2 and path[0] == WORKFLOWS else None
    if name is None:
        return None

    async def commit(data: bytes, uid: int) -> None:
        await fabric.coordinator.submit(name, data, uid)

    return commit


def definition(commit: nodes.Commit, data: bytes = b"", mtime_ns: int = 0) -> Node:
    """A workflow file, new or written before: a write() that takes it over the size limit
    fails there (shells ignore what close() says), and close() refuses it again."""

    def screen(written: bytearray) -> bool:
        check_definition_size(len(written))
        return False

    node = nodes.constant(data, mtime_ns, perm=0o644)
    node.commit, node.screen, node.entry_timeout = commit, screen, 0.0
    return node


def resolve(fabric: Fabric, path: Path) -> Node:
    coordinator = fabric.coordinator
    if len(path) == 1:
        return nodes.directory(_STARTED_NS, timeout=0.0)
    leaf = path[1]
    name = definition_name(leaf)
    if name is not None and len(path) == 2:
        rendered = coordinator.rendered(name)
        return definition(submit_target(fabric, path), rendered.definition,
                          rendered.updated_ns)
    rendered = coordinator.rendered(leaf)
    if len(path) == 2:
        return nodes.directory(time.time_ns(), perm=0o555, timeout=0.0)
    if len(path) == 3:
        if path[2] == "status":
            return nodes.live(lambda: rendered.status)
        if path[2] == "result.json":
            return nodes.live(lambda: rendered.result)
        if path[2] == "ctl":
            return nodes.control_file("/".join(path), fabric.oplog,
                                      functools.partial(coordinator.control_workflow, leaf))
    raise NotFound("/".join(path))


def list_names(fabric: Fabric, path: Path) -> list[str]:
    if len(path) == 1:
        return sorted(n + suffix for n in fabric.coordinator.names() for suffix in ("", SUFFIX))
    fabric.coordinator.rendered(path[1])
    return ["ctl", "result.json", "status"]
