"""A workflow file (/workflows/<name>.yaml), validated completely before anything starts:

    qubits: 3                 # optional: the most any stage needs
    topology: linear          # optional allocation shape
    stages:
      - name: prepare
        qubits: 2             # optional: this stage's qubit count (the largest is allocated)
        circuit: bell@v1      # applied to the workflow's live state (final measurements
        shots: 1024           #   are dropped; counts are sampled from the state after it)
        checkpoint: true      # /states/<workflow>-<stage> after the stage
        delay: 0.5            # optional seconds to wait first (models queueing)
        format: mps           # optional: the checkpoint's format

within MAX_DEFINITION_BYTES and MAX_STAGES. The YAML is checked by pydantic models (every
problem is an Invalid naming where) and becomes a frozen Workflow the coordinator runs.
"""

import dataclasses
from typing import Literal

import pydantic
import yaml

from levels import ctl
from levels.circuits import MAX_NAME_BYTES, validate_name
from levels.errors import Invalid, QfsError, TooBig
from levels.livestate import MAX_LIVE_QUBITS
from levels.stateformats import FORMATS
from levels.states import FORMAT_ALIASES

# Limits on a workflow file, so that no file can hold the daemon: its bytes are parsed (in
# a thread) only up to MAX_DEFINITION_BYTES, and every status and result render is bounded
# by MAX_STAGES lines.
MAX_DEFINITION_BYTES = 256 * 1024
MAX_STAGES = 1000
MAX_SHOTS = 1_000_000
MAX_DELAY_SECONDS = 86_400.0
CHECKPOINT_FORMATS = ("auto", *FORMATS, *FORMAT_ALIASES)


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True, frozen=True)


class _StageModel(_Strict):
    circuit: str = pydantic.Field(max_length=MAX_NAME_BYTES + 12,
                                  pattern=r"^[^@]+(@v[1-9][0-9]{0,8})?$")
    name: str | None = None
    qubits: int = pydantic.Field(0, ge=0, le=MAX_LIVE_QUBITS)
    shots: int = pydantic.Field(0, ge=0, le=MAX_SHOTS)
    checkpoint: bool = False
    delay: float = pydantic.Field(0.0, ge=0.0, le=MAX_DELAY_SECONDS, allow_inf_nan=False)
    format: Literal[CHECKPOINT_FORMATS] | None = None  # type: ignore[valid-type]


class _WorkflowModel(_Strict):
    stages: list[_StageModel] = pydantic.Field(min_length=1)
    qubits: int = pydantic.Field(0, ge=0, le=MAX_LIVE_QUBITS)
    topology: Literal[ctl.TOPOLOGIES] = "any"  # type: ignore[valid-type]


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    circuit: str
    version: int | None
    shots: int = 0
    checkpoint: bool = False
    delay: float = 0.0
    format: str | None = None
    qubits: int = 0


@dataclasses.dataclass(frozen=True)
class Workflow:
    name: str
    qubits: int
    topology: str
    stages: tuple[Stage, ...]


def check_definition_size(size: int) -> None:
    """Refuse a workflow file over the limit; called at each write() and at close."""
    if size > MAX_DEFINITION_BYTES:
        raise TooBig(f"a workflow file holds at most {MAX_DEFINITION_BYTES} bytes, "
                     f"not {size}")


def parse_workflow(name: str, text: bytes) -> Workflow:
    """Validate a workflow file completely (every problem is an Invalid naming where), so
    that nothing that starts can fail on its own definition. Slow for large files: run it
    in a thread."""
    validate_name(name, "workflow name")
    check_definition_size(len(text))
    try:
        document = yaml.load(text.decode(), Loader=yaml.CSafeLoader)
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise Invalid(f"workflow {name}: not UTF-8 YAML: {exc}") from exc
    stages = document.get("stages") if isinstance(document, dict) else None
    if isinstance(stages, list) and len(stages) > MAX_STAGES:
        raise Invalid(f"workflow {name}: {len(stages)} stages; at most {MAX_STAGES}")
    try:
        model = _WorkflowModel.model_validate(document)
    except pydantic.ValidationError as exc:
        error = exc.errors(include_input=False, include_url=False)[0]
        raise Invalid(f"workflow {name}{_where(error['loc'])}: {error['msg']}") from None
    parsed = []
    for index, stage in enumerate(model.stages):
        circuit, _, version = stage.circuit.partition("@v")
        stage_name = stage.name if stage.name is not None else f"stage{index + 1}"
        # The checkpoint takes both names: refuse now what could not be stored then.
        if len(f"{name}-{stage_name}".encode()) > MAX_NAME_BYTES:
            raise Invalid(f"workflow {name} stage {index + 1}: its checkpoint name "
                          f"{name}-{stage_name[:40]}... would be over {MAX_NAME_BYTES} bytes")
        validate_name(stage_name, f"workflow {name} stage {index + 1} name")
        parsed.append(Stage(stage_name, circuit, int(version) if version else None,
                            stage.shots, stage.checkpoint, stage.delay, stage.format,
                            stage.qubits))
    if len(f"wf-{name}".encode()) > MAX_NAME_BYTES:
        raise Invalid(f"workflow {name}: its task name wf-{name} would be over "
                      f"{MAX_NAME_BYTES} bytes")
    if len({s.name for s in parsed}) != len(parsed):
        raise Invalid(f"workflow {name}: stage names must be distinct")
    return Workflow(name, model.qubits, model.topology, tuple(parsed))


def _where(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as the file reads: ' stage 2 delay'; keys of any type
    (YAML allows numbers and lists as keys) are shown short."""
    parts: list[str] = []
    for position, part in enumerate(loc):
        if isinstance(part, int) and position and loc[position - 1] == "stages":
            parts[-1] = f"stage {part + 1}"
        else:
            parts.append(repr(part)[:40] if not isinstance(part, str) else part[:40])
    return "".join(f" {p}" for p in parts)


def stage_names(name: str, definition: str) -> list[str]:
    """The stage names of a stored definition ([] if today's rules refuse it)."""
    try:
        return [s.name for s in parse_workflow(name, definition.encode()).stages]
    except QfsError:
        return []
