"""Retention durations as configuration and meta.json write them: 90s, 30m, 24h, 7d."""

import re

from levels.errors import Invalid

_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(s|m|h|d)$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# An expiry time must be a date meta.json can show (years past 9999 are not), and under a
# second a checkpoint would be gone before anyone could read it.
MIN_RETENTION_S, MAX_RETENTION_S = 1, 3650 * 86400
FOREVER = "forever"


def parse_duration(text: str) -> float:
    """A retention such as 90s, 30m, 24h or 7d, in seconds, within the bounds above."""
    match = _DURATION.match(text.strip())
    if not match:
        raise Invalid(f"bad duration {text!r}: expected e.g. 90s, 30m, 24h, 7d")
    seconds = float(match.group(1)) * _SECONDS[match.group(2)]
    if not MIN_RETENTION_S <= seconds <= MAX_RETENTION_S:
        raise Invalid(f"retention {text.strip()} is outside 1s..3650d")
    return seconds


def parse_retention(text: str) -> float | None:
    """A duration in seconds, or None for `forever`."""
    return None if text.strip() == FOREVER else parse_duration(text)


_INTERVAL = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$")
_INTERVAL_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def parse_interval(text: str) -> float:
    """A sampling period such as 100ms, 1s or 5m, in seconds, from 10 ms to a day."""
    match = _INTERVAL.match(text.strip())
    if not match:
        raise Invalid(f"bad interval {text!r}: expected e.g. 100ms, 1s, 5m")
    seconds = float(match.group(1)) * _INTERVAL_SECONDS[match.group(2)]
    if not 0.01 <= seconds <= 86400:
        raise Invalid(f"interval {text.strip()} is outside 10ms..24h")
    return seconds
