"""Plain-Python answers for DATA_CONTRACT.md §3 (cleaning) and §4 (analytics): no Spark, no pandas.

Written apart from pinterest_platform.transforms so that tests can hold the Spark tables against it; it
applies the rules listed in pinterest_platform/transforms/cleaning.py's docstring, the plain way:
`json.loads` for parsing, `Decimal` for follower counts, `statistics.median` for medians.

- `clean_source_rows(kind, rows)`: source-table rows (dicts keyed by source column names, datetimes as
  ISO strings or datetime objects), serialized the way the posting emulator sends them, then cleaned.
- `clean_wire_values(kind, texts)`: the same from the JSON texts as received (malformed ones included);
  a value given as bytes is decoded as strict UTF-8 first, and quarantined with its bytes in hex if it
  is not UTF-8.
- `analytics(pin, geo, user)`: the nine outputs from cleaned rows, each a list of dicts sorted by its key.

Cleaned rows are dicts in contract column order with Python values (timestamps as naive UTC datetimes,
coordinates as `[lat, lon]`), one per `ind` (the last clean one received wins), sorted by `ind`.
Quarantined records are `{"kind", "reason", "raw"}` in the order received.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import statistics
from collections import Counter, defaultdict
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import Any

from pinterest_platform import contract

WHITESPACE = " \t\n\r\x0b\x0c"
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
COUNT_SUFFIX = {"": 1, "k": 1_000, "m": 1_000_000}
# the bounds of possible values, included (docs/data-contract.md, cleaned tables)
LATITUDE = (-90, 90)
LONGITUDE = (-180, 180)
AGE = (0, 150)

INTEGER = re.compile(r"[+-]?[0-9]+")
COUNT = re.compile(r"([0-9]+(?:\.[0-9]+)?)([kKmM]?)")
NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
DATETIME = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[T ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?")


# --- the wire ------------------------------------------------------------------------------------


def to_wire(row: dict[str, Any]) -> str:
    """A source row as the posting emulator sends it: compact JSON, datetimes as ISO-8601."""
    def default(value):
        if isinstance(value, dt.datetime | dt.date):
            return value.isoformat()
        raise TypeError(f"{type(value).__name__} is not JSON serializable")

    return json.dumps(row, ensure_ascii=False, separators=(",", ":"), default=default)


def _strict_object(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _parse(text: str) -> Any:
    # numbers stay as their text, as Spark reads every field as a string
    return json.loads(text, parse_int=str, parse_float=str, parse_constant=_reject_constant,
                      object_pairs_hook=_strict_object)


def _as_received(value: Any) -> str | None:
    """A parsed JSON value as a string field: what `from_json` with a string schema gives."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# --- field rules ---------------------------------------------------------------------------------


def _text(value: str | None) -> str | None:
    if value is None:
        return None
    trimmed = value.strip(WHITESPACE)
    return None if trimmed == "" or trimmed in contract.ALL_PLACEHOLDERS else value


def _integer(value: str) -> int | None:
    trimmed = value.strip(WHITESPACE)
    if not INTEGER.fullmatch(trimmed):
        return None
    number = int(trimmed)
    return number if INT32[0] <= number <= INT32[1] else None


def _follower_count(value: str) -> int | None:
    match = COUNT.fullmatch(value.strip(WHITESPACE))
    if not match:
        return None
    with localcontext() as ctx:
        ctx.prec = len(value) + 10  # room for every digit: no rounding before the final one
        scaled = Decimal(match[1]) * COUNT_SUFFIX[match[2].lower()]
        count = int(scaled.to_integral_value(rounding=ROUND_HALF_UP))
    return count if INT64[0] <= count <= INT64[1] else None


def _number(value: str) -> float | None:
    trimmed = value.strip(WHITESPACE)
    if not NUMBER.fullmatch(trimmed):
        return None
    number = float(trimmed)
    return number if math.isfinite(number) else None


def _datetime(value: str) -> dt.datetime | None:
    match = DATETIME.fullmatch(value.strip(WHITESPACE))
    if not match:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    microsecond = int((match[7] or "")[:6].ljust(6, "0"))
    try:
        return dt.datetime(year, month, day, hour, minute, second, microsecond)
    except ValueError:
        return None


def _save_location(value: str | None) -> str | None:
    prefix = contract.SAVE_LOCATION_PREFIX
    if value is not None and value.startswith(prefix):
        value = value[len(prefix):].lstrip(WHITESPACE)
    return value or None


def _decoded(value: str | bytes | None) -> tuple[str | None, str | None]:
    """(text, None) for a string, null or UTF-8 bytes; (None, the bytes in lowercase hex) otherwise."""
    if not isinstance(value, bytes):
        return value, None
    try:
        return value.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, value.hex()


def _clean_record(kind: str, text: str | None) -> tuple[dict | None, str | None]:
    """(cleaned row, None) or (None, reason)."""
    try:
        record = _parse(text)
    except (TypeError, ValueError, RecursionError):
        return None, "malformed JSON"
    if not isinstance(record, dict):
        return None, "not a JSON object"
    table = contract.SOURCE_TABLE_OF[kind]
    field = {c: _text(_as_received(record.get(c))) for c in contract.SOURCE_COLUMNS[table]}
    problems = []

    def typed(name: str, parse, what: str, bounds: tuple[int, int] | None = None):
        if field[name] is None:
            return None
        value = parse(field[name])
        if value is None:
            problems.append(f"{name} '{field[name]}' is not {what}")
        elif bounds is not None and not bounds[0] <= value <= bounds[1]:
            problems.append(f"{name} '{field[name]}' is outside [{bounds[0]}, {bounds[1]}]")
        return value

    key = field[contract.SOURCE_KEY[table]]
    if key is None:
        problems.append("missing ind")
        ind = None
    else:
        ind = _integer(key)
        if ind is None:
            problems.append(f"ind '{key}' is not an integer")
        elif ind < 0:
            problems.append(f"ind '{key}' is negative")

    if kind == "pin":
        row = {c: field.get(c) for c in contract.CLEANED_COLUMNS["pin"]}
        row["follower_count"] = typed("follower_count", _follower_count, "a count")
        row["save_location"] = _save_location(field["save_location"])
    elif kind == "geo":
        latitude = typed("latitude", _number, "a number", LATITUDE)
        longitude = typed("longitude", _number, "a number", LONGITUDE)
        timestamp = typed("timestamp", _datetime, "a datetime")
        coordinates = None if latitude is None or longitude is None else [latitude, longitude]
        row = {"country": field["country"], "coordinates": coordinates, "timestamp": timestamp}
    else:
        age = typed("age", _integer, "an integer", AGE)
        date_joined = typed("date_joined", _datetime, "a datetime")
        first, last = field["first_name"], field["last_name"]
        user_name = None if first is None or last is None else f"{first} {last}"
        row = {"user_name": user_name, "age": age, "date_joined": date_joined}
    if problems:
        return None, "; ".join(problems)
    row["ind"] = ind
    return {c: row[c] for c in contract.CLEANED_COLUMNS[kind]}, None


def clean_wire_values(kind: str, texts: list[str | bytes | None]) -> tuple[list[dict], list[dict]]:
    """JSON texts (or their bytes) as received -> (cleaned rows, one per ind, by ind; quarantined records)."""
    if kind not in contract.EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    latest: dict[int, dict] = {}
    quarantined = []
    for value in texts:
        text, invalid = _decoded(value)
        if invalid is not None:
            quarantined.append({"kind": kind, "reason": "invalid UTF-8", "raw": invalid})
            continue
        row, reason = _clean_record(kind, text)
        if reason is None:
            latest[row["ind"]] = row
        else:
            quarantined.append({"kind": kind, "reason": reason, "raw": text})
    return [latest[ind] for ind in sorted(latest)], quarantined


def clean_source_rows(kind: str, rows: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """Source-table rows -> (cleaned rows, quarantined records), as if posted by the emulator."""
    return clean_wire_values(kind, [to_wire(row) for row in rows])


# --- analytics -----------------------------------------------------------------------------------


def age_group(age: int | None) -> str | None:
    if age is None:
        return None
    for name, low, high in contract.AGE_GROUPS:
        if age >= low and (high is None or age <= high):
            return name
    return None


def _in(year: int | None, window: tuple[int, int]) -> bool:
    return year is not None and window[0] <= year <= window[1]


def _most_posted(pairs: list[tuple[Any, str | None]], key: str) -> list[dict]:
    counts = Counter((group, category) for group, category in pairs if group is not None and category is not None)
    best: dict[Any, tuple[int, str]] = {}
    for (group, category), count in counts.items():
        # greatest count, then the smallest category
        if group not in best or (-count, category) < (-best[group][0], best[group][1]):
            best[group] = (count, category)
    return [{key: group, "category": category, "category_count": count}
            for group, (count, category) in sorted(best.items())]


def _medians(values_by_group: dict[Any, list[int]]) -> dict[Any, float]:
    return {group: float(statistics.median(values)) for group, values in values_by_group.items() if values}


def analytics(pin_rows: list[dict], geo_rows: list[dict], user_rows: list[dict]) -> dict[str, list[dict]]:
    """The nine outputs of §4 from cleaned rows (one per ind each), keyed by `contract.ANALYTICS_TABLES`."""
    geo = {r["ind"]: r for r in geo_rows}
    user = {r["ind"]: r for r in user_rows}
    with_geo = [(p, geo[p["ind"]]) for p in pin_rows if p["ind"] in geo]
    with_user = [(p, user[p["ind"]]) for p in pin_rows if p["ind"] in user]
    out: dict[str, list[dict]] = {}

    out["popular_category_by_country"] = _most_posted([(g["country"], p["category"]) for p, g in with_geo], "country")

    posted = [(g["timestamp"].year if g["timestamp"] else None, p["category"]) for p, g in with_geo]
    out["popular_category_by_year"] = _most_posted(
        [(y, c) for y, c in posted if _in(y, contract.POST_YEAR_WINDOW)], "post_year")

    top_poster: dict[str, tuple[int, str]] = {}
    for p, g in with_geo:
        country, name, followers = g["country"], p["poster_name"], p["follower_count"]
        if country is None or name is None or followers is None:
            continue
        if country not in top_poster or (-followers, name) < (-top_poster[country][0], top_poster[country][1]):
            top_poster[country] = (followers, name)
    out["top_poster_by_country"] = [{"country": c, "poster_name": n, "follower_count": f}
                                    for c, (f, n) in sorted(top_poster.items())]

    ranked = sorted(out["top_poster_by_country"], key=lambda r: (-r["follower_count"], r["country"]))
    out["top_country_by_followers"] = [{"country": r["country"], "follower_count": r["follower_count"]}
                                       for r in ranked[:1]]

    out["popular_category_by_age_group"] = _most_posted(
        [(age_group(u["age"]), p["category"]) for p, u in with_user], "age_group")

    by_group: dict[str, list[int]] = defaultdict(list)
    for p, u in with_user:
        if age_group(u["age"]) is not None and p["follower_count"] is not None:
            by_group[age_group(u["age"])].append(p["follower_count"])
    out["median_followers_by_age_group"] = [{"age_group": g, "median_follower_count": m}
                                            for g, m in sorted(_medians(by_group).items())]

    users = {(u["user_name"], u["age"], u["date_joined"]) for u in user_rows}
    joined = Counter(d.year for _, _, d in users if d is not None and _in(d.year, contract.JOIN_YEAR_WINDOW))
    out["users_joined_by_year"] = [{"post_year": y, "number_users_joined": n} for y, n in sorted(joined.items())]

    by_year: dict[int, list[int]] = defaultdict(list)
    by_group_year: dict[tuple[str, int], list[int]] = defaultdict(list)
    for p, u in with_user:
        year = u["date_joined"].year if u["date_joined"] else None
        if not _in(year, contract.JOIN_YEAR_WINDOW) or p["follower_count"] is None:
            continue
        by_year[year].append(p["follower_count"])
        if age_group(u["age"]) is not None:
            by_group_year[(age_group(u["age"]), year)].append(p["follower_count"])
    out["median_followers_by_join_year"] = [{"post_year": y, "median_follower_count": m}
                                            for y, m in sorted(_medians(by_year).items())]
    out["median_followers_by_join_year_and_age_group"] = [
        {"age_group": g, "post_year": y, "median_follower_count": m} for (g, y), m in sorted(_medians(by_group_year).items())]

    return {name: out[name] for name in contract.ANALYTICS_TABLES}
