"""A model-based test of /circuits: Hypothesis drives a real mount with cp imports, writes,
editor-style renames, mkdir, rm -r, mv and remounts, and compares every listing and every
byte with a model kept in memory (as mountpoint-s3's reference tests do)."""

import errno
import os
import shutil

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

pytestmark = pytest.mark.fuse

NAMES = st.sampled_from(["a", "b", "c", "d"])
PROGRAMS = st.integers(min_value=0, max_value=5)
INVALID = b"OPENQASM 2.0;\nqreg q[1];\nnot_a_gate q[0];\n"


def program(k: int) -> bytes:
    return f'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\nrz({k}) q[0];\n'.encode()


class CircuitsModel(RuleBasedStateMachine):
    """name -> the versions' bytes, oldest first (what the mount must show)."""

    mount = None  # set by the test: one mount serves every example

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[str, list[bytes]] = {}
        for name in os.listdir(self.circuits):
            shutil.rmtree(self.circuits / name)

    @property
    def circuits(self):
        return self.mount.circuits

    def commit(self, name: str, content: bytes) -> None:
        versions = self.model.setdefault(name, [])
        if not versions or versions[-1] != content:
            versions.append(content)

    @rule(name=NAMES, k=PROGRAMS)
    def cp_import(self, name: str, k: int) -> None:
        (self.circuits / f"{name}.qasm").write_bytes(program(k))
        self.commit(name, program(k))

    @rule(name=NAMES, k=PROGRAMS)
    def write_latest(self, name: str, k: int) -> None:
        if name not in self.model:
            return
        (self.circuits / name / "latest.qasm").write_bytes(program(k))
        self.commit(name, program(k))

    @rule(name=NAMES, k=PROGRAMS)
    def editor_save(self, name: str, k: int) -> None:
        if name not in self.model:
            return
        scratch = self.circuits / name / ".latest.qasm.swp"
        scratch.write_bytes(program(k))
        os.rename(scratch, self.circuits / name / "latest.qasm")
        self.commit(name, program(k))

    @rule(name=NAMES)
    def refused_write_changes_nothing(self, name: str) -> None:
        with pytest.raises(OSError) as refused:
            (self.circuits / f"{name}.qasm").write_bytes(INVALID)
        assert refused.value.errno == errno.EINVAL

    @rule(name=NAMES)
    def mkdir(self, name: str) -> None:
        if name in self.model:
            with pytest.raises(FileExistsError):
                os.mkdir(self.circuits / name)
            return
        os.mkdir(self.circuits / name)
        self.model[name] = []

    @rule(name=NAMES)
    def rm_r(self, name: str) -> None:
        if name not in self.model:
            return
        shutil.rmtree(self.circuits / name)
        del self.model[name]

    @rule(old=NAMES, new=NAMES)
    def mv(self, old: str, new: str) -> None:
        if old not in self.model or new in self.model:
            return
        os.rename(self.circuits / old, self.circuits / new)
        self.model[new] = self.model.pop(old)

    @rule()
    def remount(self) -> None:
        self.mount.stop()
        self.mount.start()

    @invariant()
    def listing_and_bytes_match(self) -> None:
        assert sorted(os.listdir(self.circuits)) == sorted(self.model)
        for name, versions in self.model.items():
            directory = self.circuits / name
            listed = sorted(n for n in os.listdir(directory)
                            if n.startswith("v") and n.endswith(".qasm"))
            assert listed == sorted(f"v{i}.qasm" for i in range(1, len(versions) + 1))
            for i, content in enumerate(versions, start=1):
                assert (directory / f"v{i}.qasm").read_bytes() == content
            latest = directory / "latest.qasm"
            expected = versions[-1] if versions else b""
            assert latest.read_bytes() == expected
            assert os.stat(latest).st_size == len(expected)


def test_circuits_behave_like_the_model(mount_factory, tmp_path):
    config = tmp_path / "qfs.yaml"
    config.write_text("circuit_fs:\n  max_versions_per_artifact: 1000\n")
    CircuitsModel.mount = mount_factory(extra=["--config", str(config)])
    run_state_machine_as_test(CircuitsModel, settings=settings(
        max_examples=3, stateful_step_count=12, deadline=None,
        suppress_health_check=list(HealthCheck)))
