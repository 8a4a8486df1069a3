"""OpenQASM parsing and the format views of a circuit, with Qiskit's own loaders.

Programs are untrusted: everything here that touches Qiskit runs in a worker process
(levels/workers.py), and `check_source` refuses, before any parser sees the text, what
would make a parser allocate without bound (a `qreg q[100000000]`), read host files (an
`include` of anything but the standard gate libraries) or recurse without bound (deep
nesting). The limits are configuration (`circuit_fs.max_program_*`).

The parser is chosen from the program's version line (PERF-NOTES: the reference OpenQASM 3
importer can take seconds to refuse an OpenQASM 2 file); a program without one is read by
its syntax (`qreg`, `creg` or `include "qelib1.inc"` mean OpenQASM 2, as Qiskit's own
OpenQASM 2 loader accepts such files). OpenQASM 2 is read the way
`QuantumCircuit.from_qasm_str` reads it (legacy gates such as sx, swap, cswap accepted).
For OpenQASM 3 the fast Rust importer is tried first, isolated (it can raise a pyo3
PanicException, which is not an Exception), with the reference importer as the fallback
that decides; the Rust importer's diagnostics (line:column) are kept for the reason.
"""

import contextlib
import functools
import hashlib
import io
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from levels import qasm2_stats, workers
from levels.errors import Invalid, TooBig, Unexpressible, first_line

if TYPE_CHECKING:
    from qiskit import QuantumCircuit

_VERSION_LINE = re.compile(rb"OPENQASM\s+([0-9]+)(?:\.([0-9]+))?\s*;")
_LEADING_COMMENTS = re.compile(rb"\A(?:\s+|//[^\n]*\n|/\*.*?\*/)*", re.DOTALL)
_QASM2_SYNTAX = re.compile(rb"\b(?:qreg|creg)\b|\binclude\s*\"qelib1\.inc\"")
_COMMENTS = re.compile(rb"//[^\n]*|/\*.*?\*/", re.DOTALL)
# Each of these starts with its keyword, whose start as a word is checked apart
# (_keyword_matches): with a leading \b, re no longer looks for the keyword's letters
# first, and these scans were most of the checks of a small program (20 of 30 us).
_INCLUDE_WORD = re.compile(rb"include\b")
_INCLUDE = re.compile(rb"include\s*[\"']([^\"'\n]{0,200})[\"']\s*;")
_DECLARED = {  # what each declaration's size counts, qubits refused first
    "qubits": (re.compile(rb"qreg\s+[A-Za-z_][A-Za-z0-9_]*\s*\[\s*([0-9]+)\s*\]"),
               re.compile(rb"qubit\s*\[\s*([0-9]+)\s*\]")),
    "classical bits": (re.compile(rb"creg\s+[A-Za-z_][A-Za-z0-9_]*\s*\[\s*([0-9]+)\s*\]"),
                       re.compile(rb"bit\s*\[\s*([0-9]+)\s*\]")),
}
_WORD_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_PHYSICAL_QUBIT = re.compile(rb"\$([0-9]+)")
# Operations whose depth QuantumCircuit.depth() counts otherwise than the DAG does.
_NOT_IN_DAG_DEPTH = frozenset({"barrier", "if_else", "while_loop", "for_loop", "switch_case",
                               "box", "store"})
_AS_PARENTHESES = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"()[]{}"))
_OPEN = ord("(")
_STANDARD_INCLUDES = ("qelib1.inc", "stdgates.inc")

# Format views made on read, by file extension. The serializations come from one parse,
# together, and only rendering them shows whether the format can hold the circuit; the text
# drawing is most of a small circuit's rendering time, and whether it is made follows from
# the circuit's stats, so it is drawn alone, when first read or stat'ed.
SERIALIZED_VIEWS = ("qpy", "qasm2", "qasm3")
TEXT_DRAWING = "txt"
VIEW_FORMATS = (*SERIALIZED_VIEWS, TEXT_DRAWING)
MAX_TEXT_DRAWN_OPERATIONS = 10_000  # the text drawing costs ~6 KB per operation


@dataclass(frozen=True)
class ProgramLimits:
    """What one program may ask of the fabric (circuit_fs.max_program_* in the config)."""

    max_bytes: int = 4 << 20
    max_qubits: int = 1024
    max_operations: int = 100_000
    max_nesting: int = 64


def qasm_major_version(source: bytes) -> int:
    """3 or 2, from the version line at the top, else from the program's syntax."""
    head = _LEADING_COMMENTS.match(source)
    start = head.end() if head else 0
    match = _VERSION_LINE.match(source, start)
    if match is None:
        return 2 if _QASM2_SYNTAX.search(source) else 3
    return int(match.group(1))


def program_text(source: bytes, limits: ProgramLimits) -> str:
    """A written program as text: within circuit_fs.max_program_bytes (EFBIG) and UTF-8
    (EINVAL), whatever its language."""
    if len(source) > limits.max_bytes:
        raise TooBig(f"program of {len(source)} bytes; the limit is {limits.max_bytes} "
                     "(circuit_fs.max_program_bytes)")
    try:
        return source.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Invalid(f"not UTF-8 text (byte {exc.start})") from exc


def check_source(source: bytes, limits: ProgramLimits) -> str:
    """The program as text, or a refusal for what no parser should be given."""
    text = program_text(source, limits)
    if not text.strip():
        raise Invalid("empty program")
    code = _COMMENTS.sub(b" ", source)
    _check_includes(code)
    _check_sizes(code, limits)
    _check_nesting(code, limits.max_nesting)
    return text


def _keyword_matches(pattern: re.Pattern[bytes], code: bytes) -> Iterator[re.Match[bytes]]:
    """The pattern's matches whose keyword starts a word (`bit` in `qubit` does not)."""
    for match in pattern.finditer(code):
        start = match.start()
        if start == 0 or code[start - 1] not in _WORD_BYTES:
            yield match


def _check_includes(code: bytes) -> None:
    allowed = {m.start() for m in _keyword_matches(_INCLUDE, code)
               if m.group(1).decode("utf-8", "replace") in _STANDARD_INCLUDES}
    for word in _keyword_matches(_INCLUDE_WORD, code):
        if word.start() not in allowed:
            named = _INCLUDE.match(code, word.start())
            what = repr(named.group(1).decode("utf-8", "replace")) if named else "this include"
            raise Invalid(f"include of {what} refused: only {' and '.join(_STANDARD_INCLUDES)} "
                          "can be included (qfs never reads host files for a program)")


def _check_sizes(code: bytes, limits: ProgramLimits) -> None:
    declared = _declared_sizes(code)
    physical = max((int(m.group(1)) + 1 for m in _PHYSICAL_QUBIT.finditer(code)), default=0)
    declared["qubits"] = max(declared["qubits"], physical)
    for what, count in declared.items():
        if count > limits.max_qubits:
            raise TooBig(f"declares {count} {what}; the limit is {limits.max_qubits} "
                         "(circuit_fs.max_program_qubits)")


def _declared_sizes(code: bytes) -> dict[str, int]:
    """Qubits and classical bits the declarations add up to. Read left to right, each
    declaration once: `qreg bit[3];` is a register named `bit`, not a `bit[3]` as well."""
    found = sorted((match.start(), match.end(), what, int(match.group(1)))
                   for what, patterns in _DECLARED.items() for pattern in patterns
                   for match in _keyword_matches(pattern, code))
    sizes, read_to = dict.fromkeys(_DECLARED, 0), 0
    for start, end, what, size in found:
        if start >= read_to:
            sizes[what] += size
            read_to = end
    return sizes


def _check_nesting(code: bytes, max_nesting: int) -> None:
    """Any opening bracket nests, any closing one ends the innermost (never below 0). The
    brackets are picked out at C speed first (a match object per bracket was an eighth of
    the parse of a small program); a program with few openings cannot nest too deep."""
    brackets = code.translate(_AS_PARENTHESES, _NOT_BRACKETS)
    if brackets.count(b"(") <= max_nesting:
        return
    depth = 0
    for byte in brackets:
        if byte == _OPEN:
            depth += 1
            if depth > max_nesting:
                raise Invalid(f"brackets nested more than {max_nesting} deep "
                              "(circuit_fs.max_program_nesting)")
        elif depth:
            depth -= 1


@contextlib.contextmanager
def _captured_output(lines: list[str]) -> Iterator[None]:
    """Collect what native code prints on file descriptors 1 and 2 while inside (the Rust
    importer prints its diagnostics instead of putting them in the exception). Only in a
    worker process: in the daemon, those descriptors are shared by every thread."""
    if not workers.IN_WORKER:
        yield
        return
    capture = _worker_capture_file()
    capture.seek(0)
    capture.truncate()
    saved = [os.dup(fd) for fd in (1, 2)]
    for fd in (1, 2):
        os.dup2(capture.fileno(), fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, original in zip((1, 2), saved, strict=True):
            os.dup2(original, fd)
            os.close(original)
        capture.seek(0)
        lines.extend(capture.read(64 * 1024).decode("utf-8", "replace").splitlines())


@functools.cache
def _worker_capture_file() -> IO[bytes]:
    """The worker's one capture file, kept for its life: a new temporary file per parse
    cost ~35 us, a quarter of parsing a small OpenQASM 3 program in a worker."""
    return tempfile.TemporaryFile()


def _diagnostic(lines: list[str]) -> str:
    """`Expected ',' at line 4, column 7`, from the Rust importer's printed report."""
    message = location = ""
    for line in lines:
        text = line.strip()
        if not message and text.startswith("Error:"):
            message = text[len("Error:"):].strip()
        found = re.search(r"\[no file:([0-9]+):([0-9]+)\]", text)
        if found and not location:
            location = f" at line {found.group(1)}, column {found.group(2)}"
    return f"{message}{location}" if message else ""


# The reference importer (ANTLR, in Python) takes about 2 s per MiB even to refuse: on a
# large program the fast importer's diagnostic decides.
REFERENCE_IMPORTER_MAX_CHARS = 256 << 10


def _load_qasm3(text: str) -> "QuantumCircuit":
    from qiskit import qasm3

    diagnostic = ""
    printed: list[str] = []
    try:
        with warnings.catch_warnings(), _captured_output(printed):
            warnings.simplefilter("ignore")
            return qasm3.loads_experimental(text)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pyo3 PanicException derives from BaseException only
        diagnostic = _diagnostic(printed)
        unsupported = "not yet handled during OpenQASM 3 import: "
        if unsupported in str(exc):
            construct = str(exc).split(unsupported, 1)[1].split("(", 1)[0]
            diagnostic = f"{construct} is not supported by Qiskit's OpenQASM 3 importer"
    if len(text) > REFERENCE_IMPORTER_MAX_CHARS and diagnostic:
        raise Invalid(f"OpenQASM 3 rejected by Qiskit: {diagnostic}")
    try:
        with _captured_output([]):  # the reference importer prints ANTLR's complaints
            circuit = qasm3.loads(text)
    except Exception as exc:
        reason = diagnostic or first_line(exc)
        raise Invalid(f"OpenQASM 3 rejected by Qiskit: {reason}") from exc
    if any(instruction.operation.name == "for_loop" for instruction in circuit.data):
        raise Invalid("OpenQASM 3 rejected: a `for` loop is not supported by Qiskit's OpenQASM "
                      "3 importer (its loop variable would be left unbound)")
    return circuit


def _load_qasm2(text: str) -> "QuantumCircuit":
    from qiskit import qasm2

    try:
        # qelib1.inc is built into Qiskit's parser, and check_source lets no other include
        # through that OpenQASM 2 could read: no path to search (normalizing the legacy
        # one, with a stat per directory, was 30% of parsing a small program).
        return qasm2.loads(text, custom_instructions=qasm2.LEGACY_CUSTOM_INSTRUCTIONS,
                           include_path=())
    except Exception as exc:
        raise qasm2_stats.refusal(exc) from exc


def parse_program(source: bytes, limits: ProgramLimits | None = None) -> "QuantumCircuit":
    """Parse OpenQASM 2 or 3 bytes into a QuantumCircuit, or raise Invalid/TooBig with the
    reason. Call it in a worker process for a program not yet accepted."""
    limits = limits or ProgramLimits()
    return _loaded(source, check_source(source, limits), limits)


def _loaded(source: bytes, text: str, limits: ProgramLimits) -> "QuantumCircuit":
    """The circuit of a program whose text passed check_source, within the limits."""
    circuit = _load_qasm2(text) if qasm_major_version(source) == 2 else _load_qasm3(text)
    # size() leaves barriers out, in Python: only a program with more instructions needs it.
    operations = len(circuit.data)
    _refuse_beyond(limits, circuit.size() if operations > limits.max_operations else operations,
                   circuit.num_qubits)
    return circuit


def _refuse_beyond(limits: ProgramLimits, operations: int, qubits: int) -> None:
    """TooBig for a program over circuit_fs.max_program_operations or _qubits."""
    if operations > limits.max_operations:
        raise TooBig(f"{operations} operations; the limit is {limits.max_operations} "
                     "(circuit_fs.max_program_operations)")
    if qubits > limits.max_qubits:
        raise TooBig(f"{qubits} qubits; the limit is {limits.max_qubits} "
                     "(circuit_fs.max_program_qubits)")


@dataclass(frozen=True)
class CircuitStats:
    """What stats.json and the search index say about one version."""

    num_qubits: int
    num_clbits: int
    depth: int
    size: int
    gate_counts: dict[str, int]
    sha256: str
    qasm_version: int

    def as_dict(self) -> dict:
        return {
            "num_qubits": self.num_qubits,
            "num_clbits": self.num_clbits,
            "depth": self.depth,
            "size": self.size,
            "gate_counts": self.gate_counts,
            "sha256": self.sha256,
            "qasm_version": self.qasm_version,
        }


def circuit_stats(source: bytes, circuit: "QuantumCircuit") -> CircuitStats:
    counts = circuit.count_ops()
    depth, size = _depth_and_size(circuit, counts)
    return CircuitStats(
        num_qubits=circuit.num_qubits,
        num_clbits=circuit.num_clbits,
        depth=depth,
        size=size,
        gate_counts={str(k): int(v) for k, v in counts.items()},
        sha256=hashlib.sha256(source).hexdigest(),
        qasm_version=qasm_major_version(source),
    )


def _depth_and_size(circuit: "QuantumCircuit", counts: dict) -> tuple[int, int]:
    """QuantumCircuit.depth() and size(), from the circuit's DAG where they agree: its depth
    and size are computed natively (~17 us instead of ~240 us for a 60-operation program,
    a fifth of a small program's parse). A barrier counts in the DAG's but only synchronizes
    in QuantumCircuit.depth, and control flow has no DAG depth: those take Qiskit's own."""
    if _NOT_IN_DAG_DEPTH.isdisjoint(counts):
        from qiskit.converters import circuit_to_dag

        dag = circuit_to_dag(circuit, copy_operations=False)
        return dag.depth(), dag.size()
    return circuit.depth(), circuit.size()


def text_drawing_refusal(operations: int) -> str | None:
    """Why a circuit of `operations` operations (its stats' size) is not drawn as text, or
    None: a listing knows from the stats whether to show vN.txt, without drawing it."""
    if operations <= MAX_TEXT_DRAWN_OPERATIONS:
        return None
    return (f"too large to draw as text ({operations} operations; the limit is "
            f"{MAX_TEXT_DRAWN_OPERATIONS}): read the .qasm3 view instead")


def render_view(circuit: "QuantumCircuit", fmt: str) -> bytes:
    """The bytes of one format view; Unexpressible when the format cannot hold the circuit."""
    if fmt == "qpy":
        from qiskit import qpy

        buffer = io.BytesIO()
        qpy.dump(circuit, buffer)
        return buffer.getvalue()
    if fmt == "qasm2":
        from qiskit import qasm2

        try:
            return qasm2.dumps(circuit).encode() + b"\n"
        except Exception as exc:
            raise Unexpressible(f"not expressible in OpenQASM 2: {first_line(exc)}") from exc
    if fmt == "qasm3":
        from qiskit import qasm3

        try:
            return qasm3.dumps(circuit).encode() + b"\n"
        except Exception as exc:
            raise Unexpressible(f"not expressible in OpenQASM 3: {first_line(exc)}") from exc
    if fmt == TEXT_DRAWING:
        refusal = text_drawing_refusal(circuit.size())
        if refusal is not None:
            raise TooBig(refusal)
        return str(circuit.draw(output="text")).encode() + b"\n"
    raise Invalid(f"unknown format view .{fmt}")


# -- jobs for worker processes (levels/workers.py): bytes in, plain data out ---------------


def prepare(source: bytes, limits: ProgramLimits) -> CircuitStats:
    """Check, parse and measure a program that is not yet stored. OpenQASM 2 is measured
    from the parser's bytecode (levels/qasm2_stats.py) where that can say what the circuit
    would: the same parser accepts it, without building a gate object per operation."""
    text = check_source(source, limits)
    counted = qasm2_stats.stats_of(text) if qasm_major_version(source) == 2 else None
    if counted is None:
        return circuit_stats(source, _loaded(source, text, limits))
    _refuse_beyond(limits, counted.size, counted.num_qubits)
    return CircuitStats(num_qubits=counted.num_qubits, num_clbits=counted.num_clbits,
                        depth=counted.depth, size=counted.size,
                        gate_counts=counted.gate_counts,
                        sha256=hashlib.sha256(source).hexdigest(), qasm_version=2)


def render_views(source: bytes, title: str, formats: tuple[str, ...]) -> dict[str, bytes | str]:
    """Every format view of one stored version from a single parse: the bytes, or the
    reason the format cannot hold it. The circuit is named after the fabric's circuit, so
    a view is the same bytes on every mount (Qiskit would number it `circuit-53`)."""
    from levels.pictures import circuit_png

    circuit = parse_program(source, ProgramLimits(max_bytes=len(source)))
    circuit.name = title
    views: dict[str, bytes | str] = {}
    for fmt in formats:
        try:
            views[fmt] = circuit_png(circuit) if fmt == "png" else render_view(circuit, fmt)
        except (Unexpressible, TooBig) as exc:
            views[fmt] = str(exc)
    return views
