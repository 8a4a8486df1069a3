"""Recent refusals with their reasons, readable in /.qfs/log and per circuit in `errors`.

A failed write() can only return an errno; the reason goes here and to the Python log,
so that `cat /.qfs/log` answers "why was my write refused?".
"""

import collections
import logging
import time

log = logging.getLogger("qfs")


class OpLog:
    """A bounded ring of refusal lines, globally and per subject (e.g. a circuit name)."""

    def __init__(self, capacity: int = 1000, per_subject: int = 20) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=capacity)
        self._by_subject: dict[str, collections.deque[str]] = {}
        self._per_subject = per_subject
        self._replies: dict[str, str] = {}

    def refuse(self, where: str, reason: str, subject: str | None = None) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        line = f"{stamp} {where}: {reason}"
        self._lines.append(line)
        log.warning("refused %s: %s", where, reason)
        if subject is not None:
            ring = self._by_subject.setdefault(
                subject, collections.deque(maxlen=self._per_subject)
            )
            ring.append(line)

    def text(self) -> str:
        return "".join(line + "\n" for line in self._lines)

    def subject_text(self, subject: str) -> str:
        return "".join(line + "\n" for line in self._by_subject.get(subject, ()))

    def forget_subject(self, subject: str) -> None:
        self._by_subject.pop(subject, None)

    def rename_subject(self, old: str, new: str) -> None:
        if old in self._by_subject:
            self._by_subject[new] = self._by_subject.pop(old)

    def set_reply(self, control: str, text: str) -> None:
        """The answer to the last command written to a control file, read back from it."""
        self._replies[control] = text if text.endswith("\n") else text + "\n"

    def reply(self, control: str) -> str:
        return self._replies.get(control, "")
