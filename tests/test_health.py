"""Health probes that can fail: the key probe unseals a canary sealed at the first mount."""

import json
import os

import pytest

pytestmark = pytest.mark.fuse


def key_status(qfs) -> str:
    return json.loads((qfs.root / ".qfs" / "health").read_text())["components"]["key"]["status"]


def test_the_key_probe_notices_another_key(mount_factory, tmp_path):
    qfs = mount_factory()
    assert key_status(qfs) == "healthy"
    qfs.stop()
    other = tmp_path / "other.key"
    fd = os.open(other, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, os.urandom(32))
    os.close(fd)
    second = mount_factory(data=qfs.data, extra=["--key-file", str(other)])
    assert key_status(second) == "unhealthy"
    health = json.loads((second.root / ".qfs" / "health").read_text())
    assert "does not open the canary" in health["components"]["key"]["detail"]
    assert health["status"] == "unhealthy"
