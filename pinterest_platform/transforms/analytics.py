"""The nine analytics outputs of DATA_CONTRACT.md §4, from the cleaned `pin`, `geo` and `user` tables.

Pure PySpark: DataFrames in, DataFrames out, no I/O. Each output has exactly the schema of
`contract.ANALYTICS_SCHEMAS[name]` and the same rows on every run (row order is not part of a table:
outputs are not sorted, which would cost a sampling job and a shuffle each).

Posts are `pin` inner-joined on `ind` with `geo` (country, year of posting) or `user` (age, year joined).
A row whose grouping key or measured value is null takes no part in that output. "Top" rows are the
greatest count or follower count, ties going to the name first in ascending order. Years are taken in UTC
whatever the session time zone is.
"""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pinterest_platform import contract
from pinterest_platform.transforms.cleaning import conform


def _output(name: str, df: DataFrame) -> DataFrame:
    return conform(df, contract.ANALYTICS_SCHEMAS[name])


def utc_year(ts: Column) -> Column:
    """The year of a timestamp's UTC wall clock (F.year alone uses the session time zone)."""
    wall_clock = F.convert_timezone(F.current_timezone(), F.lit("UTC"), ts.cast(T.TimestampNTZType()))
    return F.year(wall_clock)


def age_group(age: Column) -> Column:
    """The label of `contract.AGE_GROUPS` that `age` falls in, or null (under 18, or null age)."""
    label = None
    for name, low, high in contract.AGE_GROUPS:
        inside = (age >= low) if high is None else age.between(low, high)
        label = F.when(inside, F.lit(name)) if label is None else label.when(inside, F.lit(name))
    return label


def _top(df: DataFrame, group: list[str], measure: str, name: str) -> DataFrame:
    """Per `group`, the row with the greatest `measure`; ties to the smallest `name`."""
    window = Window.partitionBy(*group).orderBy(F.col(measure).desc(), F.col(name).asc())
    return df.withColumn("__rank", F.row_number().over(window)).where(F.col("__rank") == 1).drop("__rank")


def _most_posted_category(posts: DataFrame, group: str) -> DataFrame:
    counts = (posts.where(F.col(group).isNotNull() & F.col("category").isNotNull())
              .groupBy(group, "category").agg(F.count(F.lit(1)).alias("category_count")))
    return _top(counts, [group], "category_count", "category")


def _median_followers(posts: DataFrame, group: list[str]) -> DataFrame:
    present = posts.where(F.col("follower_count").isNotNull())
    for column in group:
        present = present.where(F.col(column).isNotNull())
    # median is exact (percentile 0.5, interpolating): the mean of the two middle values for an even count
    return present.groupBy(*group).agg(F.median("follower_count").alias("median_follower_count"))


def _pin_geo(pin: DataFrame, geo: DataFrame) -> DataFrame:
    return pin.select("ind", "category", "poster_name", "follower_count").join(
        geo.select("ind", "country", utc_year(F.col("timestamp")).alias("post_year")), "ind")


def _pin_user(pin: DataFrame, user: DataFrame) -> DataFrame:
    return pin.select("ind", "category", "follower_count").join(
        user.select("ind", age_group(F.col("age")).alias("age_group"),
                    utc_year(F.col("date_joined")).alias("post_year")), "ind")


def _popular_category_by_country(by_geo: DataFrame) -> DataFrame:
    return _output("popular_category_by_country", _most_posted_category(by_geo, "country"))


def _popular_category_by_year(by_geo: DataFrame) -> DataFrame:
    posts = by_geo.where(F.col("post_year").between(*contract.POST_YEAR_WINDOW))
    return _output("popular_category_by_year", _most_posted_category(posts, "post_year"))


def _top_posters(by_geo: DataFrame) -> DataFrame:
    posts = by_geo.where(F.col("country").isNotNull() & F.col("poster_name").isNotNull()
                         & F.col("follower_count").isNotNull())
    return _top(posts, ["country"], "follower_count", "poster_name")


def _top_poster_by_country(top_posters: DataFrame) -> DataFrame:
    return _output("top_poster_by_country", top_posters)


def _top_country_by_followers(top_posters: DataFrame) -> DataFrame:
    """From the countries' top posters (`_top_posters`): the greatest, ties to the country."""
    top = top_posters.orderBy(F.col("follower_count").desc(), F.col("country").asc()).limit(1)
    return _output("top_country_by_followers", top)


def _popular_category_by_age_group(by_user: DataFrame) -> DataFrame:
    return _output("popular_category_by_age_group", _most_posted_category(by_user, "age_group"))


def _median_followers_by_age_group(by_user: DataFrame) -> DataFrame:
    return _output("median_followers_by_age_group", _median_followers(by_user, ["age_group"]))


def _users_joined_by_year(user: DataFrame) -> DataFrame:
    users = user.select("user_name", "age", "date_joined").distinct()
    joined = (users.select(utc_year(F.col("date_joined")).alias("post_year"))
              .where(F.col("post_year").between(*contract.JOIN_YEAR_WINDOW))
              .groupBy("post_year").agg(F.count(F.lit(1)).alias("number_users_joined")))
    return _output("users_joined_by_year", joined)


def _joined_in_window(by_user: DataFrame) -> DataFrame:
    return by_user.where(F.col("post_year").between(*contract.JOIN_YEAR_WINDOW))


def _median_followers_by_join_year(by_user: DataFrame) -> DataFrame:
    return _output("median_followers_by_join_year", _median_followers(_joined_in_window(by_user), ["post_year"]))


def _median_followers_by_join_year_and_age_group(by_user: DataFrame) -> DataFrame:
    medians = _median_followers(_joined_in_window(by_user), ["age_group", "post_year"])
    return _output("median_followers_by_join_year_and_age_group", medians)


def popular_category_by_country(pin: DataFrame, geo: DataFrame) -> DataFrame:
    return _popular_category_by_country(_pin_geo(pin, geo))


def popular_category_by_year(pin: DataFrame, geo: DataFrame) -> DataFrame:
    return _popular_category_by_year(_pin_geo(pin, geo))


def top_poster_by_country(pin: DataFrame, geo: DataFrame) -> DataFrame:
    return _top_poster_by_country(_top_posters(_pin_geo(pin, geo)))


def top_country_by_followers(pin: DataFrame, geo: DataFrame) -> DataFrame:
    """One row (none without posts): the country of the top poster overall, from the same candidates
    as `top_poster_by_country` (poster name and follower count known)."""
    return _top_country_by_followers(_top_posters(_pin_geo(pin, geo)))


def popular_category_by_age_group(pin: DataFrame, user: DataFrame) -> DataFrame:
    return _popular_category_by_age_group(_pin_user(pin, user))


def median_followers_by_age_group(pin: DataFrame, user: DataFrame) -> DataFrame:
    return _median_followers_by_age_group(_pin_user(pin, user))


def users_joined_by_year(user: DataFrame) -> DataFrame:
    """Distinct users per year joined, a user being (user_name, age, date_joined); nulls count as values."""
    return _users_joined_by_year(user)


def median_followers_by_join_year(pin: DataFrame, user: DataFrame) -> DataFrame:
    return _median_followers_by_join_year(_pin_user(pin, user))


def median_followers_by_join_year_and_age_group(pin: DataFrame, user: DataFrame) -> DataFrame:
    return _median_followers_by_join_year_and_age_group(_pin_user(pin, user))


def _posts(pin: DataFrame, geo: DataFrame, user: DataFrame) -> DataFrame:
    """Every pin row with its geo and user columns (null without a row there), in one plan: the pin table is
    shuffled by ind once for both joins, where two inner joins would shuffle it twice. `_has_geo`/`_has_user`
    mark the rows the inner joins would keep (ind is unique in a cleaned table, so a left join and a
    filter give the same rows as the inner join)."""
    places = geo.select("ind", "country", utc_year(F.col("timestamp")).alias("geo_year"),
                        F.lit(True).alias("_has_geo"))
    users = user.select("ind", age_group(F.col("age")).alias("age_group"),
                        utc_year(F.col("date_joined")).alias("join_year"), F.lit(True).alias("_has_user"))
    return (pin.select("ind", "category", "poster_name", "follower_count")
            .join(places, "ind", "left").join(users, "ind", "left"))


# the outputs of `compute_all` that read a cleaned table alone, not the summary it shares
READ_ALONE = ("users_joined_by_year",)
# the groupings of `compute_all`'s one aggregation, one per measure the outputs read
_CATEGORY_BY_COUNTRY, _CATEGORY_BY_YEAR, _TOP_POSTER, _CATEGORY_BY_AGE_GROUP = 0, 1, 2, 3
_MEDIAN_BY_AGE_GROUP, _MEDIAN_BY_JOIN_YEAR, _MEDIAN_BY_JOIN_YEAR_AND_AGE_GROUP = 4, 5, 6
_TOP_POSTER_TYPE = "struct<inverted_followers:bigint,poster_name:string>"
_GROUPING_COLUMNS = (("country", "string"), ("category", "string"), ("year", "int"), ("age_group", "string"),
                     ("follower_count", "bigint"), ("top_poster", _TOP_POSTER_TYPE))


def _grouping_entry(grouping: int, takes_part: Column, **columns: Column) -> Column:
    """One post's entry in one grouping (null when the post takes no part in it): the grouping's id, its
    key columns and the measured value, the other columns null."""
    fields = [F.lit(grouping).alias("grouping")]
    for name, type_name in _GROUPING_COLUMNS:
        fields.append(columns.get(name, F.lit(None).cast(type_name)).alias(name))
    return F.when(takes_part, F.struct(*fields))


def _summary(posts: DataFrame) -> DataFrame:
    """Every measure of the posts' outputs in one aggregation, one row per (grouping, key): post counts
    per category, the top poster per country and the median follower counts.

    Each post is expanded into the groupings it takes part in (its key and measured value known, within
    the output's year window), so one read of the joined posts feeds all of them, where one query per
    output reads the joined posts eight times (or caches all of them). The top poster is the least of
    (bitwise-not follower count, name): the greatest count, ties to the name first in ascending order."""
    c = F.col
    on_geo = c("_has_geo").isNotNull()
    on_user = c("_has_user").isNotNull()
    category, followers = c("category").isNotNull(), c("follower_count").isNotNull()
    country, age_group = c("country").isNotNull(), c("age_group").isNotNull()
    posted_in_window = c("geo_year").between(*contract.POST_YEAR_WINDOW)
    joined_in_window = c("join_year").between(*contract.JOIN_YEAR_WINDOW)
    top_poster = F.struct(F.bitwise_not(c("follower_count")).alias("inverted_followers"),
                          c("poster_name").alias("poster_name"))
    entries = F.array(
        _grouping_entry(_CATEGORY_BY_COUNTRY, on_geo & country & category,
                        country=c("country"), category=c("category")),
        _grouping_entry(_CATEGORY_BY_YEAR, on_geo & posted_in_window & category,
                        year=c("geo_year"), category=c("category")),
        _grouping_entry(_TOP_POSTER, on_geo & country & c("poster_name").isNotNull() & followers,
                        country=c("country"), top_poster=top_poster),
        _grouping_entry(_CATEGORY_BY_AGE_GROUP, on_user & age_group & category,
                        age_group=c("age_group"), category=c("category")),
        _grouping_entry(_MEDIAN_BY_AGE_GROUP, on_user & age_group & followers,
                        age_group=c("age_group"), follower_count=c("follower_count")),
        _grouping_entry(_MEDIAN_BY_JOIN_YEAR, on_user & joined_in_window & followers,
                        year=c("join_year"), follower_count=c("follower_count")),
        _grouping_entry(_MEDIAN_BY_JOIN_YEAR_AND_AGE_GROUP, on_user & joined_in_window & age_group & followers,
                        year=c("join_year"), age_group=c("age_group"), follower_count=c("follower_count")),
    )
    expanded = posts.select(F.explode(entries).alias("entry")).where(c("entry").isNotNull()).select("entry.*")
    # median is exact (percentile 0.5, interpolating) and ignores the nulls of the other groupings
    return expanded.groupBy("grouping", "country", "category", "year", "age_group").agg(
        F.count(F.lit(1)).alias("posts"), F.median("follower_count").alias("median_follower_count"),
        F.min("top_poster").alias("top_poster"))


def _popular_category(summary: DataFrame, name: str, grouping: int, group: str, key: str) -> DataFrame:
    counts = (summary.where(F.col("grouping") == grouping)
              .select(F.col(key).alias(group), "category", F.col("posts").alias("category_count")))
    return _output(name, _top(counts, [group], "category_count", "category"))


def _medians(summary: DataFrame, name: str, grouping: int, **keys: str) -> DataFrame:
    return _output(name, summary.where(F.col("grouping") == grouping)
                   .select(*(F.col(key).alias(group) for group, key in keys.items()), "median_follower_count"))


def compute_all(pin: DataFrame, geo: DataFrame, user: DataFrame,
                share: Callable[[DataFrame], DataFrame] = lambda df: df) -> dict[str, DataFrame]:
    """Every output of §4, keyed by `contract.ANALYTICS_TABLES` names (in that order).

    The eight outputs that read posts are cut from one aggregation of the joined posts (`_summary`, a few
    thousand rows); `share` is applied to it (a job passes `persist`, so the posts are joined and
    aggregated once). The cleaned tables' ind is unique (a blocking check); with duplicate inds use the
    per-output functions."""
    summary = share(_summary(_posts(pin, geo, user)))
    top_posters = (summary.where(F.col("grouping") == _TOP_POSTER)
                   .select("country", F.col("top_poster.poster_name").alias("poster_name"),
                           F.bitwise_not(F.col("top_poster.inverted_followers")).alias("follower_count")))
    outputs = {
        "popular_category_by_country": _popular_category(summary, "popular_category_by_country",
                                                         _CATEGORY_BY_COUNTRY, "country", "country"),
        "popular_category_by_year": _popular_category(summary, "popular_category_by_year",
                                                      _CATEGORY_BY_YEAR, "post_year", "year"),
        "top_poster_by_country": _top_poster_by_country(top_posters),
        "top_country_by_followers": _top_country_by_followers(top_posters),
        "popular_category_by_age_group": _popular_category(summary, "popular_category_by_age_group",
                                                           _CATEGORY_BY_AGE_GROUP, "age_group", "age_group"),
        "median_followers_by_age_group": _medians(summary, "median_followers_by_age_group",
                                                  _MEDIAN_BY_AGE_GROUP, age_group="age_group"),
        # one output reads the user table alone
        "users_joined_by_year": _users_joined_by_year(user),
        "median_followers_by_join_year": _medians(summary, "median_followers_by_join_year",
                                                  _MEDIAN_BY_JOIN_YEAR, post_year="year"),
        "median_followers_by_join_year_and_age_group": _medians(
            summary, "median_followers_by_join_year_and_age_group", _MEDIAN_BY_JOIN_YEAR_AND_AGE_GROUP,
            age_group="age_group", post_year="year"),
    }
    return {name: outputs[name] for name in contract.ANALYTICS_TABLES}
