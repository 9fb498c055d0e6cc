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


def popular_category_by_country(pin: DataFrame, geo: DataFrame) -> DataFrame:
    top = _most_posted_category(_pin_geo(pin, geo), "country")
    return _output("popular_category_by_country", top)


def popular_category_by_year(pin: DataFrame, geo: DataFrame) -> DataFrame:
    posts = _pin_geo(pin, geo).where(F.col("post_year").between(*contract.POST_YEAR_WINDOW))
    return _output("popular_category_by_year", _most_posted_category(posts, "post_year"))


def top_poster_by_country(pin: DataFrame, geo: DataFrame) -> DataFrame:
    posts = _pin_geo(pin, geo).where(F.col("country").isNotNull() & F.col("poster_name").isNotNull()
                                     & F.col("follower_count").isNotNull())
    top = _top(posts, ["country"], "follower_count", "poster_name")
    return _output("top_poster_by_country", top)


def top_country_by_followers(pin: DataFrame, geo: DataFrame) -> DataFrame:
    """One row (none without posts): the country of the top poster overall, from the same candidates
    as `top_poster_by_country` (poster name and follower count known)."""
    top = (top_poster_by_country(pin, geo)
           .orderBy(F.col("follower_count").desc(), F.col("country").asc()).limit(1))
    return _output("top_country_by_followers", top)


def popular_category_by_age_group(pin: DataFrame, user: DataFrame) -> DataFrame:
    top = _most_posted_category(_pin_user(pin, user), "age_group")
    return _output("popular_category_by_age_group", top)


def median_followers_by_age_group(pin: DataFrame, user: DataFrame) -> DataFrame:
    medians = _median_followers(_pin_user(pin, user), ["age_group"])
    return _output("median_followers_by_age_group", medians)


def users_joined_by_year(user: DataFrame) -> DataFrame:
    """Distinct users per year joined, a user being (user_name, age, date_joined); nulls count as values."""
    users = user.select("user_name", "age", "date_joined").distinct()
    joined = (users.select(utc_year(F.col("date_joined")).alias("post_year"))
              .where(F.col("post_year").between(*contract.JOIN_YEAR_WINDOW))
              .groupBy("post_year").agg(F.count(F.lit(1)).alias("number_users_joined")))
    return _output("users_joined_by_year", joined)


def median_followers_by_join_year(pin: DataFrame, user: DataFrame) -> DataFrame:
    posts = _pin_user(pin, user).where(F.col("post_year").between(*contract.JOIN_YEAR_WINDOW))
    return _output("median_followers_by_join_year", _median_followers(posts, ["post_year"]))


def median_followers_by_join_year_and_age_group(pin: DataFrame, user: DataFrame) -> DataFrame:
    posts = _pin_user(pin, user).where(F.col("post_year").between(*contract.JOIN_YEAR_WINDOW))
    medians = _median_followers(posts, ["age_group", "post_year"])
    return _output("median_followers_by_join_year_and_age_group", medians)


def compute_all(pin: DataFrame, geo: DataFrame, user: DataFrame) -> dict[str, DataFrame]:
    """Every output of §4, keyed by `contract.ANALYTICS_TABLES` names (in that order)."""
    outputs = {
        "popular_category_by_country": popular_category_by_country(pin, geo),
        "popular_category_by_year": popular_category_by_year(pin, geo),
        "top_poster_by_country": top_poster_by_country(pin, geo),
        "top_country_by_followers": top_country_by_followers(pin, geo),
        "popular_category_by_age_group": popular_category_by_age_group(pin, user),
        "median_followers_by_age_group": median_followers_by_age_group(pin, user),
        "users_joined_by_year": users_joined_by_year(user),
        "median_followers_by_join_year": median_followers_by_join_year(pin, user),
        "median_followers_by_join_year_and_age_group": median_followers_by_join_year_and_age_group(pin, user),
    }
    return {name: outputs[name] for name in contract.ANALYTICS_TABLES}
