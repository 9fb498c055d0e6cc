"""Comparing Delta rows (read with delta-rs) with plain-Python expectations, shared by end-to-end tests."""

import datetime as dt


def normalize(value):
    """Timezone-aware UTC datetimes -> naive ISO text, floats rounded far below any contract difference."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return value.isoformat()
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, list | tuple):
        return [normalize(v) for v in value]
    return value
