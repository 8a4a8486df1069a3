"""The control-file grammar: pure parsers from one written line to a command object.

    /qubits/ctl             alloc N task=T [topology=any] [noise=0.0] [isolate=none]
                            release task=T
    /qubits/qK/ctl          alloc task=T | release | on 0|1 do ACTION[; ACTION...] [prio=N]
                            off ID | off all
    /qubits/tasks/T/ctl     run CIRCUIT[@vN] [shots=1024] [noise=on|off] [seed=N]
                            apply CIRCUIT[@vN] | measure qK | reset | set NAME=VALUE | release
                            checkpoint NAME [...] | restore NAME | migrate device=D [...]
    /workflows/W/ctl        resume | cancel
    ACTION                  GATE[(angle, ...)] qA [qB ...] | set NAME=VALUE | stop
(/devices/D/... take what /qubits/... take.) Every control file's line is parsed here, once,
and the levels take the objects: nothing in the fabric builds a command line.
Bad syntax raises Invalid with a message that says what was expected. Numbers are ASCII
digits within stated ranges and reals are finite, so that nothing accepted here fails
later or makes a JSON file invalid (inf, nan).
"""

import dataclasses
import math
import re
import shlex
from typing import cast

from levels.errors import Invalid

# Far more than any command takes, and far less than FUSE's largest write (1 MiB): a
# write() over that comes in pieces, each of which would be taken for a command.
MAX_COMMAND_LENGTH = 4096
TOPOLOGIES = ("any", "linear", "ring", "triangle", "grid", "star")
ISOLATIONS = ("none", "spatial", "temporal", "strict")
_QUBIT = re.compile(r"^q([0-9]{1,4})$")
_GATE = re.compile(r"^([a-z][a-z0-9_]*)(?:\(([^()]*)\))?$")
# Parameter names: names beginning with `_` are Qiskit's own (`_loop_i_0`).
_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_INTEGER = re.compile(r"^-?[0-9]{1,19}$")
MAX_SEED = 2**63 - 1  # Aer takes a signed 64-bit seed
_CIRCUIT_REF = re.compile(r"^([A-Za-z0-9_][A-Za-z0-9_.+@=-]*?)(?:@v([1-9][0-9]*))?$")


@dataclasses.dataclass(frozen=True)
class Alloc:
    count: int
    task: str
    topology: str = "any"
    noise: float = 0.0
    isolate: str = "none"


@dataclasses.dataclass(frozen=True)
class Release:
    task: str | None = None


@dataclasses.dataclass(frozen=True)
class GateAction:
    name: str
    qubits: tuple[int, ...]
    params: tuple[float, ...] = ()


@dataclasses.dataclass(frozen=True)
class SetAction:
    name: str
    value: float


@dataclasses.dataclass(frozen=True)
class StopAction:
    pass


Action = GateAction | SetAction | StopAction


@dataclasses.dataclass(frozen=True)
class On:
    outcome: int
    actions: tuple[Action, ...]
    prio: int = 0


@dataclasses.dataclass(frozen=True)
class Off:
    trigger_id: int | None  # None: all triggers on this qubit


@dataclasses.dataclass(frozen=True)
class Run:
    circuit: str
    version: int | None
    shots: int = 1024
    noise: bool = True
    seed: int | None = None


@dataclasses.dataclass(frozen=True)
class Apply:
    circuit: str
    version: int | None


@dataclasses.dataclass(frozen=True)
class Measure:
    qubit: int


@dataclasses.dataclass(frozen=True)
class Reset:
    pass


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    name: str
    format: str | None = None
    encrypt: bool | None = None
    retention: str | None = None
    parent: str | None = None


@dataclasses.dataclass(frozen=True)
class Restore:
    name: str


@dataclasses.dataclass(frozen=True)
class Migrate:
    device: str
    format: str | None = None
    threshold: float | None = None


@dataclasses.dataclass(frozen=True)
class Resume:
    pass


@dataclasses.dataclass(frozen=True)
class Cancel:
    pass


DeviceCommand = Alloc | Release
QubitCommand = Alloc | Release | On | Off
LiveTaskCommand = Run | Apply | Measure | Reset | SetAction | Checkpoint | Restore | Release
"""What Level 1 runs on a task; a task's ctl also takes Migrate, the coordinator's."""
TaskCommand = LiveTaskCommand | Migrate
WorkflowCommand = Resume | Cancel


_QUOTING = re.compile(r"[\"'\\]")  # what shlex treats as quoting or escaping
_PLAIN_WORDS = re.compile(r"[^ \t\r\n]+")  # shlex's whitespace in POSIX mode


def _words(line: str) -> list[str]:
    if len(line) > MAX_COMMAND_LENGTH:  # the kernel would pass a longer write() in pieces
        raise Invalid(f"a command is at most {MAX_COMMAND_LENGTH} characters, not {len(line)}")
    text = line.strip()
    if not text:
        raise Invalid("empty command")
    if "\n" in text:
        raise Invalid("one command per write")
    if not _QUOTING.search(text):  # what shlex would split at, without shlex's per-char loop
        return _PLAIN_WORDS.findall(text)
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise Invalid(f"cannot split command: {exc}") from exc


def _options(words: list[str], allowed: dict[str, type], usage: str) -> dict[str, object]:
    """key=value words, each value converted to its key's type (so a cast of it holds)."""
    options: dict[str, object] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or key not in allowed:
            raise Invalid(f"unexpected {word!r}; usage: {usage}")
        if key in options:  # `task=a task=b` would act on whichever came last
            raise Invalid(f"{key}= given twice; usage: {usage}")
        if not value:  # `release task=` names no task: not a task that is not there
            raise Invalid(f"{key}= needs a value; usage: {usage}")
        options[key] = _convert(key, value, allowed[key])
    return options


def _convert(key: str, value: str, kind: type) -> object:
    if kind is bool:
        if value not in ("on", "off", "1", "0", "true", "false"):
            raise Invalid(f"{key}={value!r}: expected on|off")
        return value in ("on", "1", "true")
    if kind is int:
        if not _INTEGER.match(value):
            raise Invalid(f"{key}={value!r}: expected an integer (ASCII digits, at most 19)")
        return int(value)
    if kind is float:
        return _real(value, key)
    return kind(value)


def _real(text: str, what: str) -> float:
    """A finite number: inf and nan would be stored, then break JSON and the simulator."""
    try:
        value = float(text)
    except ValueError:
        raise Invalid(f"{what}={text!r}: expected a number") from None
    if not math.isfinite(value):
        raise Invalid(f"{what}={text!r}: expected a finite number")
    return value


def parse_qubit(word: str) -> int:
    match = _QUBIT.match(word)
    if not match:
        raise Invalid(f"expected a qubit like q17, got {word!r}")
    return int(match.group(1))


def _count(word: str) -> int:
    if not re.fullmatch(r"[0-9]{1,6}", word) or int(word) < 1:
        raise Invalid(f"expected a qubit count 1..999999, got {word!r}")
    return int(word)


ALLOC_USAGE = "alloc N task=NAME [topology=any|linear|ring|triangle|grid|star] " \
              "[noise=0..1] [isolate=none|spatial|temporal|strict]"


def _alloc(count: int, options: dict[str, object]) -> Alloc:
    if "task" not in options:
        raise Invalid(f"alloc needs task=NAME; usage: {ALLOC_USAGE}")
    topology = str(options.get("topology", "any"))
    isolate = str(options.get("isolate", "none"))
    noise = cast(float, options.get("noise", 0.0))
    if topology not in TOPOLOGIES:
        raise Invalid(f"topology={topology}: expected one of {', '.join(TOPOLOGIES)}")
    if isolate not in ISOLATIONS:
        raise Invalid(f"isolate={isolate}: expected one of {', '.join(ISOLATIONS)}")
    if not 0.0 <= noise <= 1.0:
        raise Invalid(f"noise={noise}: expected a score between 0 and 1")
    return Alloc(count, str(options["task"]), topology, noise, isolate)


_ALLOC_OPTIONS = {"task": str, "topology": str, "noise": float, "isolate": str}


def parse_device_command(line: str) -> DeviceCommand:
    """A line written to /qubits/ctl."""
    words = _words(line)
    verb, rest = words[0], words[1:]
    if verb == "alloc":
        if not rest:
            raise Invalid(f"usage: {ALLOC_USAGE}")
        return _alloc(_count(rest[0]), _options(rest[1:], _ALLOC_OPTIONS, ALLOC_USAGE))
    if verb == "release":
        options = _options(rest, {"task": str}, "release task=NAME")
        if "task" not in options:
            raise Invalid("usage: release task=NAME")
        return Release(str(options["task"]))
    raise Invalid(f"unknown command {verb!r}; /qubits/ctl takes: alloc, release")


def parse_qubit_command(line: str) -> QubitCommand:
    """A line written to /qubits/qK/ctl (K is implied by the file)."""
    words = _words(line)
    verb, rest = words[0], words[1:]
    if verb == "alloc":
        return _alloc(1, _options(rest, {"task": str, "noise": float, "isolate": str},
                                  "alloc task=NAME [isolate=...]"))
    if verb == "release":
        if rest:
            raise Invalid("usage: release")
        return Release()
    if verb == "on":
        return _parse_on(line)
    if verb == "off":
        if len(rest) != 1 or not (rest[0] == "all" or re.fullmatch(r"[0-9]{1,9}", rest[0])):
            raise Invalid("usage: off ID | off all")
        return Off(None if rest[0] == "all" else int(rest[0]))
    raise Invalid(f"unknown command {verb!r}; a qubit's ctl takes: alloc, release, on, off")


def _parse_on(line: str) -> On:
    match = re.match(r"^\s*on\s+([01])\s+do\s+(.*?)\s*(?:\bprio=(-?[0-9]{1,9}))?\s*$",
                     line.strip())
    if not match:
        raise Invalid("usage: on 0|1 do ACTION[; ACTION...] [prio=N], N of at most 9 digits")
    actions = tuple(parse_action(part) for part in match.group(2).split(";") if part.strip())
    if not actions:
        raise Invalid("a trigger needs at least one action")
    return On(int(match.group(1)), actions, int(match.group(3) or 0))


def parse_action(text: str) -> Action:
    words = text.split()
    if words == ["stop"]:
        return StopAction()
    if words and words[0] == "set":
        name, value = _assignment(" ".join(words[1:]))
        return SetAction(name, value)
    if not words:
        raise Invalid("empty action")
    match = _GATE.match(words[0])
    if not match:
        raise Invalid(f"bad gate {words[0]!r}: expected NAME or NAME(angle, ...)")
    params: tuple[float, ...] = ()
    if match.group(2) is not None:
        params = tuple(_real(p.strip(), f"angle in {words[0]}")
                       for p in match.group(2).split(","))
    qubits = tuple(parse_qubit(w) for w in words[1:])
    if not qubits:
        raise Invalid(f"gate {match.group(1)} needs qubits, e.g. x q18")
    if len(set(qubits)) != len(qubits):
        raise Invalid(f"gate {match.group(1)} names a qubit twice")
    return GateAction(match.group(1), qubits, params)


def _assignment(text: str) -> tuple[str, float]:
    name, sep, value = text.replace(" ", "").partition("=")
    if not sep or not _IDENT.match(name):
        raise Invalid(f"expected NAME=VALUE with NAME a letter then up to 63 letters, digits "
                      f"or _ (names beginning with _ are Qiskit's), got {text!r}")
    return name, _real(value, name)


def _circuit_ref(word: str) -> tuple[str, int | None]:
    match = _CIRCUIT_REF.match(word)
    if not match:
        raise Invalid(f"expected CIRCUIT or CIRCUIT@vN, got {word!r}")
    return match.group(1), int(match.group(2)) if match.group(2) else None


RUN_USAGE = "run CIRCUIT[@vN] [shots=1024] [noise=on|off] [seed=N]"
CHECKPOINT_USAGE = "checkpoint NAME [format=auto|statevector|...] [encrypt=0|1] " \
                   "[retention=24h] [parent=CHECKPOINT]"
TASK_VERBS = ("run", "apply", "measure", "reset", "set", "checkpoint", "restore", "migrate",
              "release")


def parse_task_command(line: str) -> TaskCommand:
    """A line written to /qubits/tasks/T/ctl."""
    words = _words(line)
    verb, rest = words[0], words[1:]
    if verb == "checkpoint":
        if not rest:
            raise Invalid(f"usage: {CHECKPOINT_USAGE}")
        options = _options(rest[1:], {"format": str, "encrypt": bool, "retention": str,
                                      "parent": str}, CHECKPOINT_USAGE)
        return Checkpoint(rest[0], cast(str | None, options.get("format")),
                          cast(bool | None, options.get("encrypt")),
                          cast(str | None, options.get("retention")),
                          cast(str | None, options.get("parent")))
    if verb == "restore":
        if len(rest) != 1:
            raise Invalid("usage: restore CHECKPOINT")
        return Restore(rest[0])
    if verb == "migrate":
        usage = "migrate device=NAME [format=statevector|mps|...] [threshold=0.95]"
        options = _options(rest, {"device": str, "format": str, "threshold": float}, usage)
        if "device" not in options:
            raise Invalid(f"usage: {usage}")
        threshold = cast(float | None, options.get("threshold"))
        if threshold is not None and not 0 <= threshold <= 1:
            raise Invalid(f"threshold={threshold}: expected a fidelity 0..1")
        return Migrate(str(options["device"]), cast(str | None, options.get("format")),
                       threshold)
    if verb == "run":
        if not rest:
            raise Invalid(f"usage: {RUN_USAGE}")
        name, version = _circuit_ref(rest[0])
        options = _options(rest[1:], {"shots": int, "noise": bool, "seed": int}, RUN_USAGE)
        shots = cast(int, options.get("shots", 1024))
        if not 1 <= shots <= 10_000_000:
            raise Invalid(f"shots={shots}: expected 1..10000000")
        seed = cast(int | None, options.get("seed"))
        if seed is not None and not 0 <= seed <= MAX_SEED:
            raise Invalid(f"seed={seed}: expected 0..{MAX_SEED}")
        return Run(name, version, shots, bool(options.get("noise", True)), seed)
    if verb == "apply":
        if len(rest) != 1:
            raise Invalid("usage: apply CIRCUIT[@vN]")
        return Apply(*_circuit_ref(rest[0]))
    if verb == "measure":
        if len(rest) != 1:
            raise Invalid("usage: measure qK (K: the task's logical qubit)")
        return Measure(parse_qubit(rest[0]))
    if verb == "reset" and not rest:
        return Reset()
    if verb == "set":
        return SetAction(*_assignment(" ".join(rest)))
    if verb == "release" and not rest:
        return Release()
    raise Invalid(f"unknown command {line.strip()!r}; a task's ctl takes: {', '.join(TASK_VERBS)}")


def parse_workflow_command(line: str) -> WorkflowCommand:
    """A line written to /workflows/W/ctl."""
    words = _words(line)
    if words == ["resume"]:
        return Resume()
    if words == ["cancel"]:
        return Cancel()
    raise Invalid(f"unknown command {line.strip()!r}; a workflow's ctl takes: resume, cancel")
