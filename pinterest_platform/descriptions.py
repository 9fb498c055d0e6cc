"""What every table and column holds, in plain words (from docs/data-contract.md), and where each column
comes from (column lineage), written once for the UI.

Pure Python (no pyspark): tables are named by their asset key strings (`raw/<kind>`, `cleaned/<kind>`,
`cleaned/quarantine`, `analytics/<name>`, as in assets/batch.py); `assets/metadata.py` turns these into
`dagster/column_schema` descriptions and `dagster/column_lineage`."""

from __future__ import annotations

KINDS = ("pin", "geo", "user")
# source table of each kind (docs/data-contract.md, Source database); their columns are the wire fields
SOURCE_TABLES = {"pin": "pinterest_data", "geo": "geolocation_data", "user": "user_data"}
QUARANTINE = "cleaned/quarantine"

_IND = "Row number of the posting event; links a pin to its geo and user rows (the same number in all three)."

# --- what producers send: the source tables' columns, every field as text on the wire -------------------

WIRE_COLUMNS: dict[str, dict[str, str]] = {
    "pin": {
        "index": _IND + " Called `index` here and `ind` everywhere else.",
        "unique_id": "Identifier of the pin (a UUID4).",
        "title": "Title of the pin; `No Title Data Available` when the scraper found none.",
        "description": "Text of the pin; `No description available`, `No description available Story format` or "
                       "`Untitled` when there is none.",
        "poster_name": "Name of the account that posted the pin; `User Info Error` when unknown.",
        "follower_count": "Followers of the poster, as text (`437`, `26k`, `6M`); `User Info Error` when unknown.",
        "tag_list": "The pin's tags joined by commas; `N,o, ,T,a,g,s, ,A,v,a,i,l,a,b,l,e` when it has none.",
        "is_image_or_video": "Kind of media: `image`, `video` or `multi-video(story page format)`.",
        "image_src": "Address of the pin's image; `Image src error.` when missing.",
        "downloaded": "1 when the scraper downloaded the media, else 0 (dropped by cleaning).",
        "save_location": "Where the scraper saved the media: `Local save in /data/<category>`.",
        "category": "The pin's category, one of 13 (art, beauty, christmas, ... travel, vehicles).",
    },
    "geo": {
        "ind": _IND,
        "timestamp": "When the event was posted (ISO-8601 date and time, UTC).",
        "latitude": "Latitude of the place of posting, in degrees.",
        "longitude": "Longitude of the place of posting, in degrees.",
        "country": "Country of the place of posting.",
    },
    "user": {
        "ind": _IND,
        "first_name": "First name of the user who posted.",
        "last_name": "Last name of the user who posted.",
        "age": "Age of the user, in years.",
        "date_joined": "When the user joined Pinterest (ISO-8601 date and time, UTC).",
    },
}

# --- cleaned tables ------------------------------------------------------------------------------------------

_NULL = " Placeholders and blank text become null."

CLEANED_COLUMNS: dict[str, dict[str, str]] = {
    "pin": {
        "ind": "Row number of the posting event (the raw `index`): one row per ind, never null.",
        "unique_id": "Identifier of the pin (a UUID4)." + _NULL,
        "title": "Title of the pin." + _NULL,
        "description": "Text of the pin." + _NULL,
        "follower_count": "Followers of the poster as a number: `26k` is 26000, `6M` is 6000000; null when unknown.",
        "poster_name": "Name of the account that posted the pin, exactly as sent (emoji and trailing spaces "
                       "kept); null when unknown.",
        "tag_list": "The pin's tags joined by commas." + _NULL,
        "is_image_or_video": "Kind of media: `image`, `video` or `multi-video(story page format)`.",
        "image_src": "Address of the pin's image." + _NULL,
        "save_location": "Folder where the media was saved, the path only: `/data/travel`.",
        "category": "The pin's category, one of 13 (art, beauty, christmas, ... travel, vehicles).",
    },
    "geo": {
        "ind": "Row number of the posting event: one row per ind, never null.",
        "country": "Country of the place of posting.",
        "coordinates": "Place of posting as [latitude, longitude] in degrees, not rounded.",
        "timestamp": "When the event was posted, in UTC.",
    },
    "user": {
        "ind": "Row number of the posting event: one row per ind, never null.",
        "user_name": "Full name of the user who posted: first name, a space, last name.",
        "age": "Age of the user, in years (0 to 150).",
        "date_joined": "When the user joined Pinterest, in UTC.",
    },
}

QUARANTINE_COLUMNS: dict[str, str] = {
    "source": "The Kafka topic or Kinesis stream the record came from.",
    "kind": "The kind of event: pin, geo or user.",
    "reason": "Why the record could not be cleaned, e.g. `malformed JSON` or `age '200' is outside [0, 150]`; "
              "several problems are joined by `; `.",
    "raw": "The record's text exactly as received (its bytes in lowercase hex when they are not valid UTF-8).",
    "origin": "Where the record was read: its raw topic file, or shard:sequence number on Kinesis.",
    "quarantined_at": "When the record was quarantined, in UTC.",
}

# --- analytics tables ------------------------------------------------------------------------------------------

_AGE_GROUP = "Age group of the posters: `18-24`, `25-35`, `36-50` or `+50` (bounds included)."
_MEDIAN = "Median follower count of the posters (exact: the mean of the two middle values for an even count)."
_JOIN_YEAR = "Year the users joined Pinterest (UTC), 2015 to 2020."

ANALYTICS_COLUMNS: dict[str, dict[str, str]] = {
    "popular_category_by_country": {
        "country": "Country where the pins were posted.",
        "category": "The category with the most pins posted in that country (ties to the first name).",
        "category_count": "How many pins of that category were posted in that country.",
    },
    "popular_category_by_year": {
        "post_year": "Year the pins were posted (UTC), 2018 to 2022.",
        "category": "The category with the most pins posted that year (ties to the first name).",
        "category_count": "How many pins of that category were posted that year.",
    },
    "top_poster_by_country": {
        "country": "Country where the pins were posted.",
        "poster_name": "The poster with the most followers among those who posted in that country.",
        "follower_count": "That poster's follower count.",
    },
    "top_country_by_followers": {
        "country": "Country of the most followed poster of all.",
        "follower_count": "That poster's follower count.",
    },
    "popular_category_by_age_group": {
        "age_group": _AGE_GROUP,
        "category": "The category with the most pins posted by that age group (ties to the first name).",
        "category_count": "How many pins of that category that age group posted.",
    },
    "median_followers_by_age_group": {
        "age_group": _AGE_GROUP,
        "median_follower_count": _MEDIAN,
    },
    "users_joined_by_year": {
        "post_year": _JOIN_YEAR,
        "number_users_joined": "How many distinct users (same name, age and join date) joined that year.",
    },
    "median_followers_by_join_year": {
        "post_year": _JOIN_YEAR,
        "median_follower_count": _MEDIAN,
    },
    "median_followers_by_join_year_and_age_group": {
        "age_group": _AGE_GROUP,
        "post_year": _JOIN_YEAR,
        "median_follower_count": _MEDIAN,
    },
}

# --- tables ------------------------------------------------------------------------------------------------------

TABLE_DESCRIPTIONS: dict[str, str] = {
    "cleaned/pin": "Every pin posted, one row per posting event (ind), holding its latest-posted version: "
                   "placeholders such as `No Title Data Available` become null, follower counts like `26k` "
                   "become numbers, and the save location keeps only its path.",
    "cleaned/geo": "Where and when each event was posted, one row per ind (its latest-posted version): the "
                   "country, the coordinates as [latitude, longitude], and the time of posting in UTC.",
    "cleaned/user": "Who posted each event, one row per ind (its latest-posted version): the user's full name, "
                    "age and the date they joined. The same person appears under several inds.",
    QUARANTINE: "Every record, batch or streaming, that could not be cleaned (not UTF-8, not JSON, a value of the "
                "wrong type or out of range...), with where it came from, why, and its text exactly as received. "
                "Nothing is dropped silently.",
    "analytics/popular_category_by_country": "For each country, the category with the most pins posted there, "
                                             "and how many.",
    "analytics/popular_category_by_year": "For each year from 2018 to 2022, the category with the most pins "
                                          "posted that year, and how many.",
    "analytics/top_poster_by_country": "For each country, the poster with the most followers among those who "
                                       "posted there, and their follower count.",
    "analytics/top_country_by_followers": "One row: the country of the most followed poster of all, and that "
                                          "poster's follower count.",
    "analytics/popular_category_by_age_group": "For each age group (18-24, 25-35, 36-50, +50), the category "
                                               "its users posted most, and how many pins.",
    "analytics/median_followers_by_age_group": "For each age group (18-24, 25-35, 36-50, +50), the median "
                                               "follower count of the posters.",
    "analytics/users_joined_by_year": "For each year from 2015 to 2020, how many distinct users joined "
                                      "Pinterest.",
    "analytics/median_followers_by_join_year": "For each year users joined, 2015 to 2020, the median follower "
                                               "count of the posters who joined that year.",
    "analytics/median_followers_by_join_year_and_age_group": "For each age group and year joined (2015 to "
                                                             "2020), the median follower count of the posters.",
}

COLUMN_DESCRIPTIONS: dict[str, dict[str, str]] = {
    **{f"raw/{kind}": WIRE_COLUMNS[kind] for kind in KINDS},
    **{f"cleaned/{kind}": CLEANED_COLUMNS[kind] for kind in KINDS},
    QUARANTINE: QUARANTINE_COLUMNS,
    **{f"analytics/{name}": columns for name, columns in ANALYTICS_COLUMNS.items()},
}


def table_key(table: str) -> str | None:
    """The key of COLUMN_DESCRIPTIONS for a table named by its asset key (`cleaned/pin`) or its own name:
    `pin`, `quarantine`, an analytics name, a source table (`user_data`: its wire fields) or a streaming
    table (`<prefix>_pin_table`: the same columns as the cleaned table)."""
    if table in COLUMN_DESCRIPTIONS:
        return table
    name = table.rsplit("/", 1)[-1]
    for kind in KINDS:
        if name == kind or name.endswith(f"_{kind}_table"):
            return f"cleaned/{kind}"
        if name == SOURCE_TABLES[kind]:
            return f"raw/{kind}"
    if name == "quarantine":
        return QUARANTINE
    if name in ANALYTICS_COLUMNS:
        return f"analytics/{name}"
    return None


def column_descriptions(table: str) -> dict[str, str]:
    """Column name -> description of a table (see table_key for the names understood); {} if unknown."""
    key = table_key(table)
    return dict(COLUMN_DESCRIPTIONS[key]) if key else {}


def table_description(table: str) -> str | None:
    key = table_key(table)
    return TABLE_DESCRIPTIONS.get(key) if key else None


# --- column lineage: (upstream asset key, column) of each column -----------------------------------------------

Dep = tuple[str, str]


def _same(kind: str, renames: dict[str, list[str]] | None = None) -> dict[str, list[Dep]]:
    """Cleaned columns of `kind` from the raw fields of the same name, unless `renames` says otherwise."""
    renames = renames or {}
    return {c: [(f"raw/{kind}", field) for field in renames.get(c, [c])] for c in CLEANED_COLUMNS[kind]}


_PIN, _GEO, _USER = "cleaned/pin", "cleaned/geo", "cleaned/user"

COLUMN_LINEAGE: dict[str, dict[str, list[Dep]]] = {
    "cleaned/pin": _same("pin", {"ind": ["index"]}),
    "cleaned/geo": _same("geo", {"coordinates": ["latitude", "longitude"]}),
    "cleaned/user": _same("user", {"user_name": ["first_name", "last_name"]}),
    "analytics/popular_category_by_country": {
        "country": [(_GEO, "country")], "category": [(_PIN, "category")],
        "category_count": [(_PIN, "category")]},
    "analytics/popular_category_by_year": {
        "post_year": [(_GEO, "timestamp")], "category": [(_PIN, "category")],
        "category_count": [(_PIN, "category")]},
    "analytics/top_poster_by_country": {
        "country": [(_GEO, "country")], "poster_name": [(_PIN, "poster_name")],
        "follower_count": [(_PIN, "follower_count")]},
    "analytics/top_country_by_followers": {
        "country": [(_GEO, "country")], "follower_count": [(_PIN, "follower_count")]},
    "analytics/popular_category_by_age_group": {
        "age_group": [(_USER, "age")], "category": [(_PIN, "category")],
        "category_count": [(_PIN, "category")]},
    "analytics/median_followers_by_age_group": {
        "age_group": [(_USER, "age")], "median_follower_count": [(_PIN, "follower_count")]},
    "analytics/users_joined_by_year": {
        "post_year": [(_USER, "date_joined")],
        "number_users_joined": [(_USER, "user_name"), (_USER, "age"), (_USER, "date_joined")]},
    "analytics/median_followers_by_join_year": {
        "post_year": [(_USER, "date_joined")], "median_follower_count": [(_PIN, "follower_count")]},
    "analytics/median_followers_by_join_year_and_age_group": {
        "age_group": [(_USER, "age")], "post_year": [(_USER, "date_joined")],
        "median_follower_count": [(_PIN, "follower_count")]},
}

# --- charts: analytics tables that read better as bars (label columns, value column) ---------------------------

CHARTS: dict[str, tuple[list[str], str]] = {
    "popular_category_by_year": (["post_year", "category"], "category_count"),
    "median_followers_by_age_group": (["age_group"], "median_follower_count"),
    "users_joined_by_year": (["post_year"], "number_users_joined"),
    "median_followers_by_join_year": (["post_year"], "median_follower_count"),
}
