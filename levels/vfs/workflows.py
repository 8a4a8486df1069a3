"""The /workflows tree (the Coordinator):

    /workflows/<name>.yaml       write a workflow (validated at close) and it starts
    /workflows/<name>/status     progress, one line per stage
    /workflows/<name>/result.json
    /workflows/<name>/ctl        resume | cancel
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from levels.coordinator import check_definition_size
from levels.errors import Invalid
from levels.events import workflow_topic
from levels.vfs.entry import (
    FILE,
    STARTED_NS,
    Attrs,
    Constant,
    ControlFile,
    Dir,
    Entry,
    Live,
    Names,
    Path,
    Stream,
    directory,
)

if TYPE_CHECKING:
    from levels.fabric import Fabric

WORKFLOWS = "workflows"
SUFFIX = ".yaml"


def definition_name(leaf: str) -> str | None:
    return leaf[: -len(SUFFIX)] if leaf.endswith(SUFFIX) and len(leaf) > len(SUFFIX) else None


class WorkflowsDir(Dir):
    """/workflows: `<name>.yaml` beside a `<name>/` directory per workflow. Creating or
    renaming onto `<name>.yaml` submits it; other names are EACCES."""

    def __init__(self, fabric: Fabric, path: Path) -> None:
        super().__init__(fabric, path, directory(STARTED_NS, timeout=0.0))

    async def lookup(self, name: str) -> Entry:
        coordinator = self.fabric.coordinator
        workflow = definition_name(name)
        if workflow is not None:
            rendered = coordinator.rendered(workflow)
            return WorkflowFile(self.fabric, self.child(name), rendered.definition,
                                rendered.updated_ns)
        rendered = coordinator.rendered(name)
        return WorkflowDir(self.fabric, self.child(name),
                           directory(rendered.updated_ns, perm=0o555, timeout=0.0))

    def names(self) -> Names:
        return sorted(n + suffix for n in self.fabric.coordinator.names()
                      for suffix in ("", SUFFIX))

    async def create(self, name: str, mode: int, uid: int, gid: int) -> Entry:
        if self._submitted(name) is None:
            return await super().create(name, mode, uid, gid)
        return WorkflowFile(self.fabric, self.child(name))

    async def commit_target(self, name: str) -> Entry | None:  # type: ignore[override]
        return WorkflowFile(self.fabric, self.child(name)) if self._submitted(name) else None

    @staticmethod
    def _submitted(leaf: str) -> str | None:
        """The workflow `<name>.yaml` submits. A name itself ending in .yaml is EINVAL:
        its directory would be read as a definition, its ctl and status out of reach."""
        workflow = definition_name(leaf)
        if workflow is not None and definition_name(workflow) is not None:
            raise Invalid(f"{leaf}: a workflow's name may not end in {SUFFIX}")
        return workflow


class WorkflowFile(Constant):
    """<name>.yaml, new or written before: a write() that takes it over the size limit
    fails there with EFBIG (shells ignore what close() says), and close() refuses it again;
    a definition the coordinator refuses is EINVAL (ENOENT for a circuit it names that
    does not exist), and starts nothing."""

    writable = commits = True

    def __init__(self, fabric: Fabric, path: Path, data: bytes = b"",
                 mtime_ns: int = 0) -> None:
        super().__init__(fabric, path, data, Attrs(FILE, 0o644, mtime_ns, entry_timeout=0.0))
        self.name = definition_name(path[-1]) or ""

    def screen(self, data: bytearray) -> bool:
        check_definition_size(len(data))
        return False

    async def commit(self, data: bytes, uid: int) -> None:
        await self.fabric.coordinator.submit(self.name, data, uid)


class WorkflowDir(Dir):
    """/workflows/<name>/: status and result.json (live), ctl."""

    def names(self) -> Names:
        return ["ctl", "result.json", "status"]

    async def lookup(self, name: str) -> Entry:
        rendered = self.fabric.coordinator.rendered(self.path[1])
        if name == "status":
            return Live(self.fabric, self.child(name), lambda: rendered.status)
        if name == "result.json":
            return Live(self.fabric, self.child(name), lambda: rendered.result)
        if name == "ctl":
            return WorkflowCtl(self.fabric, self.child(name))
        if name == "events":  # unlisted: grep -r and cp -a never wait on it
            topic = workflow_topic(self.path[1])
            return Stream(self.fabric, self.child(name),
                          lambda: self.fabric.qubits.events.subscribe(topic))
        return await super().lookup(name)


class WorkflowCtl(ControlFile):
    """/workflows/<name>/ctl: resume | cancel (levels/ctl.py parses; EINVAL for others,
    EBUSY when the workflow's state refuses it, EACCES for another user's workflow)."""

    async def control(self, line: str, uid: int) -> str:
        return await self.fabric.coordinator.control_workflow(self.path[1], line, uid)
