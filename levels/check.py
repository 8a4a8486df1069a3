"""The consistency checker: what `qfsmount --check [--repair]` and /.qfs/health report.

Cross-level invariants, each with the repair that is safe:
- every blob is referenced by a checkpoint (orphans: deleted on repair; a crash between
  writing a blob and committing its checkpoint leaves one);
- every checkpoint names its blob by a hex digest, the blob exists and its parent exists
  (broken ones: their records deleted on repair, since nothing could restore them; a blob
  goes with them only when no surviving checkpoint shares it, and a key that is not a
  digest is never used as a path);
- every task sits on a configured device, on qubits that exist and that no other task
  holds (bad tasks: released on repair);
- every circuit version has its source, within today's program limits (report only: the
  record says what is lost or refused);
- the search index holds exactly the circuits (rebuilt on repair; it is derived data);
- the facets index (structured search) holds exactly the rows the circuit records imply
  (rebuilt on repair, in one transaction).
"""

import dataclasses
import json
from typing import Any

from levels.errors import Busy, QfsError
from levels.fabric import Fabric
from levels.qasm import check_source
from levels.store.blobs import is_key


@dataclasses.dataclass
class Finding:
    kind: str
    subject: str
    detail: str
    repaired: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check(fabric: Fabric, repair: bool = False) -> list[Finding]:
    findings: list[Finding] = []
    findings += _blobs_and_checkpoints(fabric, repair)
    findings += _tasks(fabric, repair)
    findings += _circuit_sources(fabric)
    findings += _index(fabric, repair)
    findings += _facets(fabric, repair)
    return findings


def _blobs_and_checkpoints(fabric: Fabric, repair: bool) -> list[Finding]:
    findings = []
    with fabric.meta.reading() as txn:
        records = {k.decode(): json.loads(v) for k, v in txn.scan("checkpoints")}
    stored = set(fabric.states.blob_keys())
    referenced = {r.get("blob") for r in records.values()}
    for key in sorted(stored - referenced):
        finding = Finding("orphan_blob", key, "a blob no checkpoint refers to")
        if repair:
            fabric.states.delete_blob(key)
            finding.repaired = True
        findings.append(finding)
    broken = {n for n, r in records.items() if r.get("blob") not in stored}
    changed = True
    while changed:  # a checkpoint whose parent is broken cannot be restored either
        changed = False
        for name, record in records.items():
            parent = record.get("parent")
            if name not in broken and parent and (parent not in records or parent in broken):
                broken.add(name)
                changed = True
    for name in sorted(broken):
        key = records[name].get("blob")
        detail = f"its blob key {key!r} is not a SHA-256 hex digest" if not is_key(key) else \
            "its blob is missing" if key not in stored else \
            f"its parent {records[name]['parent']} is missing or broken"
        findings.append(Finding("broken_checkpoint", name, detail, repaired=repair))
    if repair and broken:
        fabric.states.forget(sorted(broken))
    return findings


def _tasks(fabric: Fabric, repair: bool) -> list[Finding]:
    findings = []
    manager = fabric.qubits
    held: dict[tuple[str, int], str] = {}
    for task in sorted(manager.tasks.values(), key=lambda t: t.created_ns):
        problem = ""
        if task.device not in manager.device_names():
            problem = f"its device {task.device} is not configured"
        elif any(not 0 <= q < manager.num_qubits(task.device) for q in task.qubits):
            problem = f"it holds qubits outside device {task.device}"
        else:
            clash = [q for q in task.qubits if (task.device, q) in held]
            if clash:
                problem = f"q{clash[0]} is also held by task {held[(task.device, clash[0])]}"
        if not problem:
            held.update({(task.device, q): task.name for q in task.qubits})
            continue
        finding = Finding("bad_task", task.name, problem)
        if repair:
            manager.forget_task(task.name)
            finding.repaired = True
        findings.append(finding)
    return findings


def _circuit_sources(fabric: Fabric) -> list[Finding]:
    """Every version has its source, and the source is one the mount would accept today
    (within the configured program limits, including nothing but the standard libraries):
    a version stored before a limit existed must not turn into an EIO only at `ls`."""
    findings = []
    for circuit in fabric.circuits.all_circuits():
        for version in circuit.versions:
            subject = f"{circuit.name}@v{version.n}"
            try:
                source = fabric.circuits.source(circuit.name, version.n)
            except Exception as exc:
                findings.append(Finding("missing_source", subject, str(exc)))
                continue
            try:
                check_source(source, fabric.circuits.limits)
            except QfsError as exc:
                findings.append(Finding("unservable_circuit", subject, str(exc)))
    return findings


def _index(fabric: Fabric, repair: bool) -> list[Finding]:
    if not fabric.search.kept:
        return []
    try:
        indexed = fabric.search.doc_count()
    except Busy as exc:  # its rebuild cannot write (a full disk): a finding, not a crash
        return [Finding("index_unavailable", "search index", str(exc))]
    stored = fabric.circuits.count()
    if indexed == stored:
        return []
    finding = Finding("index_mismatch", "search index",
                      f"the index holds {indexed} circuits, LMDB {stored}")
    if repair:
        fabric.search.rebuild_now(
            lambda: (c.search_document() for c in fabric.circuits.all_circuits()))
        finding.repaired = True
    return [finding]


def _facets(fabric: Fabric, repair: bool) -> list[Finding]:
    problems = fabric.circuits.facet_differences()
    if not problems:
        return []
    shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5
                                       else "")
    finding = Finding("facets_mismatch", "facets index",
                      f"{len(problems)} rows differ from the circuit records: {shown}")
    if repair:
        fabric.circuits.rebuild_facets()
        finding.repaired = True
    return [finding]


def health(fabric: Fabric) -> dict[str, Any]:
    """Per component: healthy | degraded | unhealthy, with reasons (the reference's checker)."""
    components: dict[str, dict[str, Any]] = {}

    def component(name: str, probe) -> None:
        try:
            status, detail = probe()
        except Exception as exc:
            status, detail = "unhealthy", f"{type(exc).__name__}: {exc}"
        components[name] = {"status": status, "detail": detail}

    def lmdb():
        used, size = fabric.meta.usage()
        if not size:  # PostgreSQL: no map to fill (unreachable: usage raised, unhealthy)
            return "healthy", f"the metadata database holds {used} bytes"
        status = "degraded" if used > 0.9 * size else "healthy"
        return status, f"{used} of {size} bytes of the map in use"

    def index():
        if not fabric.search.kept:
            return "healthy", "no text index is kept (circuit_fs.index_types)"
        indexed, stored = fabric.search.doc_count(), fabric.circuits.count()
        ok = indexed == stored
        return ("healthy" if ok else "degraded"), f"{indexed} indexed of {stored} circuits"

    def states():
        broken = [f for f in _blobs_and_checkpoints(fabric, False)]
        kinds = sorted({f.kind for f in broken})
        status = "unhealthy" if "broken_checkpoint" in kinds else \
            "degraded" if kinds else "healthy"
        return status, f"{len(fabric.states.names())} checkpoints; problems: {kinds or 'none'}"

    def key():
        if fabric.key_canary.opens():
            return "healthy", "the AES-256-GCM key opens the canary sealed at the first mount"
        return "unhealthy", ("the key does not open the canary sealed at the first mount: "
                             "encrypted checkpoints cannot be read with this key file")

    def devices():
        names = fabric.qubits.device_names()
        bad = [f for f in _tasks(fabric, False)]
        status = "degraded" if bad else "healthy"
        return status, f"devices {', '.join(names)}; {len(fabric.qubits.tasks)} tasks; " \
                       f"{len(bad)} inconsistent"

    def aer():
        import qiskit_aer

        return "healthy", f"qiskit-aer {qiskit_aer.__version__}"

    for name, probe in (("lmdb", lmdb), ("search_index", index), ("state_store", states),
                        ("key", key), ("device_model", devices), ("aer", aer)):
        component(name, probe)
    order = {"healthy": 0, "degraded": 1, "unhealthy": 2}
    overall = max((c["status"] for c in components.values()), key=order.__getitem__)
    return {"status": overall, "components": components}
