"""Times as the fabric writes them in its JSON files: `2026-01-31T12:00:00Z`, UTC, to the
second, and read back by `parse_iso` (meta.json's `created` is written back by cp -a)."""

import calendar
import time

from levels.errors import Invalid

ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def iso_utc(ns: int) -> str:
    """`ns` as parse_iso reads it: the year always of four digits (strftime writes the
    year 1 as "1")."""
    moment = time.gmtime(ns / 1e9)
    return f"{moment.tm_year:04d}" + time.strftime(ISO_FORMAT.removeprefix("%Y"), moment)


def parse_iso(text: str) -> int:
    """A time as meta.json and stats.json write it, in ns."""
    try:
        return calendar.timegm(time.strptime(text, ISO_FORMAT)) * 10**9
    except ValueError as exc:
        raise Invalid(f"{text!r} is not a time like 2026-01-31T12:00:00Z") from exc
