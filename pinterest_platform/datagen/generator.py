"""Synthetic source database (DATA_CONTRACT.md §1): the three tables the original "RDS" held, at any size.

Events are generated in fixed blocks, each with its own seeded RNG, so the data is a deterministic function
of (seed, position): the same seed gives identical rows, and N events are a prefix of N+M events. Posters
and users are drawn from pools that grow with the position, so both repeat across events, as in the original.
Rows are inserted in chunks with bound parameters, so memory stays flat from 10 to 10 million events.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect
from tqdm import tqdm

from pinterest_platform.contract import (
    CATEGORIES,
    MEDIA_TYPES,
    PLACEHOLDERS,
    SAVE_LOCATION_PREFIX,
    SOURCE_COLUMNS,
    SOURCE_GEO_TABLE,
    SOURCE_PIN_TABLE,
    SOURCE_USER_TABLE,
)

__all__ = [
    "CHUNK_SIZE",
    "generate_events",
    "seed_source_database",
    "source_rows_held",
    "SourceNotEmptyError",
    "source_engine",
    "source_tables",
]

CHUNK_SIZE = 5_000        # events per executemany (x3 rows); bounds memory and transaction size
_BLOCK = 1_000            # events per RNG block; fixed, so insertion chunking never changes the data

IMAGE, VIDEO, STORY = MEDIA_TYPES
(TITLE_NONE,) = PLACEHOLDERS["title"]
DESC_STORY, DESC_NONE, DESC_UNTITLED = PLACEHOLDERS["description"]
(USER_INFO_ERROR,) = PLACEHOLDERS["poster_name"]
assert PLACEHOLDERS["follower_count"] == (USER_INFO_ERROR,)
(TAGS_NONE,) = PLACEHOLDERS["tag_list"]
(IMAGE_SRC_ERROR,) = PLACEHOLDERS["image_src"]
assert DESC_STORY.endswith("Story format") and DESC_UNTITLED == "Untitled"

TIMESTAMP_RANGE = (datetime(2017, 10, 16), datetime(2022, 11, 1))   # geo timestamps: 2017-10 .. 2022-10
DATE_JOINED_RANGE = (datetime(2015, 10, 1), datetime(2017, 10, 16))  # joined before any post of theirs
AGE_RANGE = (20, 59)


# --- schema ---------------------------------------------------------------------------------------

# SQLite's default DATETIME storage appends ".000000"; store the wire format (§2) instead, so any
# reader of the file (sqlite3 CLI, Spark JDBC) sees `2020-08-28 03:52:47`.
_DateTime = sa.DateTime().with_variant(
    sqlite_dialect.DATETIME(
        storage_format="%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d"),
    "sqlite",
)
# MySQL's server default charset may be latin1; emoji in titles and poster names need 4-byte UTF-8
_MYSQL_TABLE_ARGS = {"mysql_charset": "utf8mb4", "mysql_engine": "InnoDB"}


def source_tables(metadata: sa.MetaData | None = None) -> dict[str, sa.Table]:
    """The three §1 tables (contract column order) on `metadata`, keyed by table name."""
    metadata = metadata if metadata is not None else sa.MetaData()
    tables = {
        SOURCE_PIN_TABLE: sa.Table(
            SOURCE_PIN_TABLE, metadata,
            # "index" is reserved in MySQL; as a Column name SQLAlchemy quotes it in every statement
            sa.Column("index", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("unique_id", sa.String(36), nullable=False),
            sa.Column("title", sa.Text),
            sa.Column("description", sa.Text),
            sa.Column("poster_name", sa.String(255)),
            sa.Column("follower_count", sa.Text),  # text on purpose: `26k`, `6M`, `User Info Error`
            sa.Column("tag_list", sa.Text),
            sa.Column("is_image_or_video", sa.String(64)),
            sa.Column("image_src", sa.String(512)),
            sa.Column("downloaded", sa.Integer),
            sa.Column("save_location", sa.String(255)),
            sa.Column("category", sa.String(64)),
            **_MYSQL_TABLE_ARGS,
        ),
        SOURCE_GEO_TABLE: sa.Table(
            SOURCE_GEO_TABLE, metadata,
            sa.Column("ind", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("timestamp", _DateTime),
            sa.Column("latitude", sa.Double),   # DOUBLE on MySQL: FLOAT would round to single precision
            sa.Column("longitude", sa.Double),
            sa.Column("country", sa.String(255)),
            **_MYSQL_TABLE_ARGS,
        ),
        SOURCE_USER_TABLE: sa.Table(
            SOURCE_USER_TABLE, metadata,
            sa.Column("ind", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("first_name", sa.String(255)),
            sa.Column("last_name", sa.String(255)),
            sa.Column("age", sa.Integer),
            sa.Column("date_joined", _DateTime),
            **_MYSQL_TABLE_ARGS,
        ),
    }
    for name, table in tables.items():
        assert [c.name for c in table.columns] == SOURCE_COLUMNS[name], name
    return tables


def source_engine(url: str) -> sa.Engine:
    """Engine for the source database: WAL on SQLite (the emulator reads while we write), utf8mb4 on MySQL."""
    parsed = sa.make_url(url)
    backend = parsed.get_backend_name()
    if backend == "mysql":
        if "charset" not in parsed.query:
            parsed = parsed.update_query_dict({"charset": "utf8mb4"})
        return sa.create_engine(parsed, pool_pre_ping=True, pool_recycle=3600)
    if backend == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # safe with WAL (a crash loses at most the last commits, never corrupts) and much faster
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return sa.create_engine(parsed)


# --- deterministic randomness ---------------------------------------------------------------------

class _FastRandom(random.Random):
    """random.Random with float-scaled integer draws: about 3x faster than the exact rejection sampling
    of the stdlib, and the bias (below 2**-40 for our ranges) is irrelevant for synthetic data."""

    def choice(self, seq):
        return seq[int(self.random() * len(seq))]

    def randrange(self, start, stop=None):
        if stop is None:
            start, stop = 0, start
        return start + int(self.random() * (stop - start))

    def randint(self, a, b):
        return a + int(self.random() * (b - a + 1))


def _rng(seed: int, stream: str, n: int) -> random.Random:
    # hashing (not seed+n arithmetic) keeps streams and neighbouring seeds independent
    digest = hashlib.blake2b(f"{seed}:{stream}:{n}".encode(), digest_size=16).digest()
    return _FastRandom(int.from_bytes(digest, "big"))


def _between(rng: random.Random, lo: datetime, hi: datetime) -> datetime:
    return lo + timedelta(seconds=rng.randrange(int((hi - lo).total_seconds())))


# --- vocabulary -----------------------------------------------------------------------------------

FIRST_NAMES = (
    "Aaron", "Abigail", "Adam", "Alexandra", "Alicia", "Amanda", "Amy", "Andrea", "Andrew", "Angela",
    "Anthony", "Ashley", "Barbara", "Benjamin", "Brandon", "Brian", "Brittany", "Carlos", "Caroline",
    "Catherine", "Charles", "Christina", "Christopher", "Cynthia", "Daniel", "David", "Deborah", "Denise",
    "Derek", "Diana", "Dominic", "Donna", "Dylan", "Edward", "Elizabeth", "Emily", "Eric", "Erin", "Ethan",
    "Gabriel", "Gregory", "Hannah", "Heather", "Isabel", "Jacob", "James", "Jasmine", "Jason", "Jeffrey",
    "Jennifer", "Jessica", "John", "Jonathan", "Jose", "Joseph", "Joshua", "Julia", "Justin", "Karen",
    "Katherine", "Kayla", "Kelly", "Kevin", "Kimberly", "Kristen", "Laura", "Lauren", "Linda", "Lisa",
    "Madison", "Marcus", "Maria", "Mark", "Matthew", "Megan", "Melissa", "Michael", "Michelle", "Monica",
    "Natalie", "Nicholas", "Nicole", "Olivia", "Patricia", "Patrick", "Paul", "Rachel", "Rebecca",
    "Richard", "Robert", "Ryan", "Samantha", "Sandra", "Sarah", "Scott", "Sean", "Stephanie", "Steven",
    "Susan", "Taylor", "Thomas", "Timothy", "Tyler", "Valerie", "Victoria", "William", "Zachary",
)
LAST_NAMES = (
    "Adams", "Allen", "Alvarez", "Anderson", "Bailey", "Baker", "Barnes", "Bell", "Bennett", "Brooks",
    "Brown", "Bryant", "Butler", "Campbell", "Carter", "Castillo", "Chavez", "Clark", "Collins", "Cook",
    "Cooper", "Cox", "Cruz", "Davis", "Diaz", "Edwards", "Evans", "Fisher", "Flores", "Foster", "Garcia",
    "Gomez", "Gonzalez", "Gray", "Green", "Griffin", "Hall", "Harris", "Hayes", "Henderson", "Hernandez",
    "Hill", "Howard", "Hughes", "Jackson", "James", "Jenkins", "Johnson", "Jones", "Kelly", "Kim", "King",
    "Lee", "Lewis", "Long", "Lopez", "Martin", "Martinez", "Miller", "Mitchell", "Moore", "Morales",
    "Morgan", "Morris", "Murphy", "Myers", "Nelson", "Nguyen", "O'Brien", "Ortiz", "Parker", "Patel",
    "Perez", "Perry", "Peterson", "Phillips", "Powell", "Price", "Ramirez", "Reed", "Reyes", "Richardson",
    "Rivera", "Roberts", "Robinson", "Rodriguez", "Rogers", "Ross", "Russell", "Sanchez", "Sanders",
    "Scott", "Smith", "Stewart", "Sullivan", "Taylor", "Thomas", "Thompson", "Torres", "Turner", "Walker",
    "Ward", "Watson", "White", "Williams", "Wilson", "Wood", "Wright", "Young",
)
COUNTRIES = (
    "Afghanistan", "Albania", "Algeria", "American Samoa", "Andorra", "Angola", "Anguilla",
    "Antarctica (the territory South of 60 deg S)", "Antigua and Barbuda", "Argentina", "Armenia", "Aruba",
    "Australia", "Austria", "Azerbaijan", "Bahamas", "Bahrain", "Bangladesh", "Barbados", "Belarus",
    "Belgium", "Belize", "Benin", "Bermuda", "Bhutan", "Bolivia", "Bosnia and Herzegovina", "Botswana",
    "Bouvet Island (Bouvetoya)", "Brazil", "British Indian Ocean Territory (Chagos Archipelago)",
    "British Virgin Islands", "Brunei Darussalam", "Bulgaria", "Burkina Faso", "Burundi", "Cambodia",
    "Cameroon", "Canada", "Cape Verde", "Cayman Islands", "Central African Republic", "Chad", "Chile",
    "China", "Christmas Island", "Cocos (Keeling) Islands", "Colombia", "Comoros", "Congo", "Cook Islands",
    "Costa Rica", "Cote d'Ivoire", "Croatia", "Cuba", "Cyprus", "Czech Republic", "Denmark", "Djibouti",
    "Dominica", "Dominican Republic", "Ecuador", "Egypt", "El Salvador", "Equatorial Guinea", "Eritrea",
    "Estonia", "Ethiopia", "Faroe Islands", "Falkland Islands (Malvinas)", "Fiji", "Finland", "France",
    "French Guiana", "French Polynesia", "French Southern Territories", "Gabon", "Gambia", "Georgia",
    "Germany", "Ghana", "Gibraltar", "Greece", "Greenland", "Grenada", "Guadeloupe", "Guam", "Guatemala",
    "Guernsey", "Guinea", "Guinea-Bissau", "Guyana", "Haiti", "Heard Island and McDonald Islands",
    "Holy See (Vatican City State)", "Honduras", "Hong Kong", "Hungary", "Iceland", "India", "Indonesia",
    "Iran", "Iraq", "Ireland", "Isle of Man", "Israel", "Italy", "Jamaica", "Japan", "Jersey", "Jordan",
    "Kazakhstan", "Kenya", "Kiribati", "Korea", "Kuwait", "Kyrgyz Republic", "Lao People's Democratic Republic",
    "Latvia", "Lebanon", "Lesotho", "Liberia", "Libyan Arab Jamahiriya", "Liechtenstein", "Lithuania",
    "Luxembourg", "Macao", "Madagascar", "Malawi", "Malaysia", "Maldives", "Mali", "Malta",
    "Marshall Islands", "Martinique", "Mauritania", "Mauritius", "Mayotte", "Mexico",
    "Micronesia", "Moldova", "Monaco", "Mongolia", "Montenegro", "Montserrat", "Morocco", "Mozambique",
    "Myanmar", "Namibia", "Nauru", "Nepal", "Netherlands", "Netherlands Antilles", "New Caledonia",
    "New Zealand", "Nicaragua", "Niger", "Nigeria", "Niue", "Norfolk Island", "North Macedonia",
    "Northern Mariana Islands", "Norway", "Oman", "Pakistan", "Palau", "Palestinian Territory", "Panama",
    "Papua New Guinea", "Paraguay", "Peru", "Philippines", "Pitcairn Islands", "Poland", "Portugal",
    "Puerto Rico", "Qatar", "Reunion", "Romania", "Russian Federation", "Rwanda", "Saint Barthelemy",
    "Saint Helena", "Saint Kitts and Nevis", "Saint Lucia", "Saint Martin", "Saint Pierre and Miquelon",
    "Saint Vincent and the Grenadines", "Samoa", "San Marino", "Sao Tome and Principe", "Saudi Arabia",
    "Senegal", "Serbia", "Seychelles", "Sierra Leone", "Singapore", "Slovakia (Slovak Republic)",
    "Slovenia", "Solomon Islands", "Somalia", "South Africa",
    "South Georgia and the South Sandwich Islands", "Spain", "Sri Lanka", "Sudan", "Suriname",
    "Svalbard & Jan Mayen Islands", "Swaziland", "Sweden", "Switzerland", "Syrian Arab Republic", "Taiwan",
    "Tajikistan", "Tanzania", "Thailand", "Timor-Leste", "Togo", "Tokelau", "Tonga", "Trinidad and Tobago",
    "Tunisia", "Turkey", "Turkmenistan", "Turks and Caicos Islands", "Tuvalu", "Uganda", "Ukraine",
    "United Arab Emirates", "United Kingdom", "United States Minor Outlying Islands",
    "United States Virgin Islands", "United States of America", "Uruguay", "Uzbekistan", "Vanuatu",
    "Venezuela", "Vietnam", "Wallis and Futuna", "Western Sahara", "Yemen", "Zambia", "Zimbabwe",
)
COTE_DIVOIRE = "Cote d'Ivoire"
ANTARCTICA = "Antarctica (the territory South of 60 deg S)"

# per-category subjects for titles and tags
TOPICS: dict[str, tuple[str, ...]] = {
    "art": ("Watercolor Painting", "Abstract Art", "Charcoal Drawing", "Acrylic Pour", "Sketchbook",
            "Portrait Drawing", "Oil Painting", "Art Journal", "Pastel Landscape", "Ink Illustration"),
    "beauty": ("Makeup Tutorial", "Skin Care Routine", "Nail Art", "Hair Color", "Eyebrow Shaping",
               "Natural Makeup", "Braided Hairstyles", "Lip Color", "Glowing Skin", "Face Mask"),
    "christmas": ("Christmas Tree", "Christmas Cookies", "Advent Calendar", "Holiday Wreath", "Stocking",
                  "Christmas Table", "Gingerbread House", "Ornaments", "Elf on the Shelf", "Holiday Lights"),
    "diy-and-crafts": ("Mason Jar Crafts", "Paper Flowers", "Macrame", "Upcycled Furniture", "Kids Crafts",
                       "Crochet Blanket", "Resin Art", "Cricut Projects", "Felt Ornaments", "Pallet Projects"),
    "education": ("Classroom Management", "Phonics", "Math Centers", "Science Experiments", "Homeschool",
                  "Sight Words", "Teacher Organization", "Reading Comprehension", "STEM Activities",
                  "Bulletin Board"),
    "event-planning": ("Wedding Decor", "Baby Shower", "Birthday Party", "Party Favors", "Table Setting",
                       "Bridal Shower", "Graduation Party", "Balloon Garland", "Event Timeline", "Centerpieces"),
    "finance": ("Budget Planner", "Save Money", "Debt Payoff", "Side Hustle", "Frugal Living",
                "Passive Income", "Investing for Beginners", "Emergency Fund", "Meal Planning on a Budget",
                "Retirement Savings"),
    "home-decor": ("Living Room", "Farmhouse Kitchen", "Boho Bedroom", "Bathroom Makeover", "Gallery Wall",
                   "Entryway", "Modern Farmhouse", "Small Spaces", "Cozy Reading Nook", "Scandinavian Interior"),
    "mens-fashion": ("Mens Outfits", "Streetwear", "Suits", "Casual Style", "Sneakers", "Leather Jacket",
                     "Watches", "Mens Hairstyles", "Business Casual", "Smart Casual"),
    "quotes": ("Motivational Quotes", "Life Quotes", "Love Quotes", "Funny Quotes", "Inspirational Words",
               "Positive Affirmations", "Friendship Quotes", "Success Quotes", "Mindset", "Self Love"),
    "tattoos": ("Small Tattoos", "Sleeve Tattoo", "Floral Tattoo", "Fine Line Tattoo", "Matching Tattoos",
                "Minimalist Tattoo", "Geometric Tattoo", "Script Tattoo", "Back Tattoo", "Watercolor Tattoo"),
    "travel": ("Travel Tips", "Bucket List", "Road Trip", "Beach Vacation", "Packing List", "Europe Travel",
               "Hidden Gems", "Travel Photography", "Budget Travel", "National Parks"),
    "vehicles": ("Classic Cars", "Ford Mustang", "Motorcycles", "Camper Van", "Muscle Cars", "Jeep Wrangler",
                 "Car Restoration", "Off Road", "Sports Cars", "Vintage Trucks"),
}
assert all(len(topics) == 10 for topics in TOPICS.values())
_TAG_STEPS = (1, 3, 7, 9)  # coprime to 10
ADJECTIVES = ("Easy", "Simple", "Beautiful", "Amazing", "Cute", "Modern", "Creative", "Unique", "Cozy",
              "Budget-Friendly", "Stunning", "Quick", "Minimalist", "Vintage", "Colorful", "Classic")
TITLE_TEMPLATES = (
    "{n} {adj} {topic} Ideas", "{adj} {topic} for Beginners", "How to Start with {topic}",
    "{topic}: {n} Tips You Need to Know", "The Best {topic} of {year}", "{adj} {topic}",
    "{topic} Inspiration", "My {adj} {topic} Project", "{n} {topic} Ideas You'll Love ❤️",
    "{topic} – Step by Step Guide",
)
SENTENCES = (
    "This is one of my favourite ideas and it only takes a few minutes.",
    "Save this pin for later so you never lose it!",
    "Perfect for anyone who wants to try something new this season.",
    "Click through for the full tutorial with step by step photos.",
    "You will not believe how easy this is to recreate at home.",
    "We tested dozens of options and these are the ones that actually work.",
    "Great for beginners, fun for experts.",
    "Affordable, practical and beautiful – what more could you want?",
    "Follow for more inspiration every week.",
    "I have been doing this for years and these are my best tips.",
    "Everything you need is probably already in your house.",
    "Check out the full post on the blog, link in the pin.",
)
BRAND_WORDS = ("Studio", "Daily", "Co.", "Magazine", "Blog", "Collective", "Lab", "House", "Hub", "Shop",
               "Diaries", "Journal", "Corner", "Club", "Life")
EMOJI = ("🌸", "✨", "💕", "🎄", "🏡", "🚗", "🎨", "💄", "🌍", "📚", "💰", "🖤", "😊", "🔥")
TAGLINES = ("DIY & Home Decor", "Recipes, Crafts & More", "Travel + Lifestyle", "Beauty Tips",
            "Art Prints", "Budget Tips", "Style Inspiration", "Family & Kids")


def _format_followers(count: int, decimal: bool) -> str:
    # Pinterest's display form: plain below 1,000, then `26k`, `6M`; a few profiles show `1.5k`
    if count < 1_000:
        return str(count)
    if count < 1_000_000:
        if decimal and count < 10_000:
            return f"{count / 1000:.1f}k".replace(".0k", "k")
        return f"{count // 1000}k"
    if decimal and count < 10_000_000:
        return f"{count / 1_000_000:.1f}M".replace(".0M", "M")
    return f"{count // 1_000_000}M"


# posters with a fixed trait, so every run shows each case (the forced events below use them)
_SPECIAL_POSTERS = {1: "trailing_space", 2: "emoji", 3: "pipe", 4: "decimal", 5: "zero", 6: "millions",
                    7: "hundreds", 8: "thousands"}


@lru_cache(maxsize=65_536)
def _poster(seed: int, pid: int) -> tuple[str, str, str]:
    """(poster_name, follower_count, home category) of poster `pid`: fixed for the whole data set."""
    rng = _rng(seed, "poster", pid)
    special = _SPECIAL_POSTERS.get(pid)
    kind = rng.random()
    topic_category = rng.choice(CATEGORIES)
    if kind < 0.45:
        name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
    elif kind < 0.8:
        name = f"{rng.choice(ADJECTIVES)} {rng.choice(TOPICS[topic_category]).split()[-1]} {rng.choice(BRAND_WORDS)}"
    else:
        name = f"{rng.choice(LAST_NAMES)}{rng.choice(BRAND_WORDS).replace('.', '')}"
    style = rng.random()
    if special == "pipe" or (special is None and style < 0.04):
        name = f"{name} | {rng.choice(TAGLINES)}"
    elif special == "emoji" or (special is None and style < 0.08):
        name = f"{name} {rng.choice(EMOJI)}"
    if special == "trailing_space" or (special is None and 0.08 <= style < 0.12):
        name += " "   # scraped names keep the display name's trailing blank

    # log-normal around a few thousand followers: most accounts are small, a handful reach millions
    exponent = min(max(rng.gauss(3.6, 1.3), 0.0), 7.6)
    count = 0 if rng.random() < 0.02 else int(10 ** exponent)
    decimal = rng.random() < 0.15
    count = {"zero": 0, "decimal": 1_500, "millions": 6_000_000 + rng.randrange(900_000),
             "hundreds": rng.randrange(100, 1_000), "thousands": rng.randrange(10_000, 999_000)}.get(special, count)
    if special == "decimal":
        decimal = True
    elif special is not None:
        decimal = False
    return name, _format_followers(count, decimal), topic_category


@lru_cache(maxsize=65_536)
def _user(seed: int, uid: int) -> tuple[str, str, int, datetime, str]:
    """(first_name, last_name, age, date_joined, home country) of user `uid`: the same person every time."""
    rng = _rng(seed, "user", uid)
    return (rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES), rng.randint(*AGE_RANGE),
            _between(rng, *DATE_JOINED_RANGE), rng.choice(COUNTRIES))


# Special cases pinned near the head of every data set (position -> traits), so that even 200 events
# hold every placeholder, both odd countries, and repeated posters and users. Other positions draw freely.
_FORCED: dict[int, dict[str, Any]] = {
    pos: traits for pos, traits in zip(range(1, 200, 3), (
        {"story": True, "poster": 0, "user": 0},
        {"title": TITLE_NONE, "poster": 1},
        {"description": DESC_NONE, "poster": 2, "country": COTE_DIVOIRE},
        {"description": DESC_UNTITLED, "poster": 3, "user": 0},
        {"user_info_error": True, "poster": 0},
        {"tags": TAGS_NONE, "poster": 5, "country": ANTARCTICA},
        {"image_src": IMAGE_SRC_ERROR, "poster": 6, "user": 1},
        {"media": VIDEO, "poster": 7},
        {"media": STORY, "description": DESC_STORY, "poster": 8, "user": 0},
        {"long": True, "poster": 0, "user": 1},
        {"poster": 1, "user": 2},
        {"poster": 2, "user": 2},
        {"story": True, "poster": 3, "user": 2},
        {"poster": 4, "media": VIDEO},
    ), strict=False)
}


def _long_text(rng: random.Random) -> str:
    return " ".join(rng.choice(SENTENCES) for _ in range(rng.randint(12, 30)))


def _event(rng: random.Random, seed: int, position: int, key: int) -> tuple[dict, dict, dict]:
    forced = _FORCED.get(position, {})
    pid = forced.get("poster")
    if pid is None:
        # the pools grow with the position and lean to low ids, so early posters and users recur often
        pid = int((25 + position // 3) * rng.random() ** 2)
    uid = forced.get("user")
    if uid is None:
        uid = int((15 + position // 4) * rng.random() ** 1.7)
    poster_name, follower_count, home_category = _poster(seed, pid)
    first_name, last_name, age, date_joined, home_country = _user(seed, uid)

    category = home_category if rng.random() < 0.7 else rng.choice(CATEGORIES)
    topic = rng.choice(TOPICS[category])
    pin = {
        "index": key,
        "unique_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "downloaded": 1,
        "save_location": f"{SAVE_LOCATION_PREFIX}/data/{category}",
        "category": category,
    }
    free = not forced

    def chance(p: float) -> bool:
        # pinned events take no random placeholder, which could hide the case they were pinned for
        return rng.random() < p and free

    if forced.get("story") or chance(0.015):
        # scraped story pages: nothing but the category survived
        pin.update(title=TITLE_NONE, description=DESC_STORY, poster_name=USER_INFO_ERROR,
                   follower_count=USER_INFO_ERROR, tag_list=TAGS_NONE, is_image_or_video=STORY,
                   image_src=IMAGE_SRC_ERROR, downloaded=0)
    else:
        roll = rng.random()
        media = forced.get("media") or (IMAGE if roll < 0.86 else VIDEO if roll < 0.96 else STORY)
        title = rng.choice(TITLE_TEMPLATES).format(
            n=rng.randint(3, 50), adj=rng.choice(ADJECTIVES), topic=topic, year=rng.randint(2017, 2022))
        roll = rng.random() if free else 1.0
        if forced.get("long") or roll < 0.05:
            description = _long_text(rng)
        elif roll < 0.07:
            description = DESC_NONE
        elif roll < 0.075:
            description = DESC_UNTITLED
        elif roll < 0.08 or (media == STORY and roll < 0.4):
            description = DESC_STORY
        else:
            description = " ".join(rng.choice(SENTENCES) for _ in range(rng.randint(1, 3)))
        # distinct tags without rng.sample's cost: walk the topic list with a step coprime to its length
        topics = TOPICS[category]
        first, step = rng.randrange(len(topics)), rng.choice(_TAG_STEPS)
        tags = [topics[(first + j * step) % len(topics)] for j in range(rng.randint(3, 8))]
        digest = f"{rng.getrandbits(128):032x}"
        pin.update(
            title=forced.get("title") or (TITLE_NONE if chance(0.01) else title),
            description=forced.get("description") or description,
            poster_name=poster_name,
            follower_count=follower_count,
            tag_list=forced.get("tags") or (TAGS_NONE if chance(0.02) else ",".join(tags)),
            is_image_or_video=media,
            image_src=forced.get("image_src") or (
                IMAGE_SRC_ERROR if chance(0.005) else
                f"https://i.pinimg.com/originals/{digest[:2]}/{digest[2:4]}/{digest[4:6]}/{digest}.jpg"),
        )
        if forced.get("user_info_error") or chance(0.01):
            pin.update(poster_name=USER_INFO_ERROR, follower_count=USER_INFO_ERROR)
    # rebuild in contract column order, so a row's dict reads like the table
    pin = {column: pin[column] for column in SOURCE_COLUMNS[SOURCE_PIN_TABLE]}

    geo = {
        "ind": key,
        "timestamp": _between(rng, *TIMESTAMP_RANGE),
        "latitude": rng.uniform(-90.0, 90.0),
        "longitude": rng.uniform(-180.0, 180.0),
        "country": forced.get("country") or (home_country if rng.random() < 0.6 else rng.choice(COUNTRIES)),
    }
    user = {"ind": key, "first_name": first_name, "last_name": last_name, "age": age,
            "date_joined": date_joined}
    return pin, geo, user


def generate_events(events: int, seed: int = 0) -> Iterator[tuple[dict, dict, dict]]:
    """Yield (pinterest_data, geolocation_data, user_data) row dicts, one triple per event, in key order.

    Deterministic and prefix-stable; the key is shared by the three rows and increases with gaps, as the
    original's sampled `index` did."""
    if events < 0:
        raise ValueError(f"events must be >= 0, got {events}")
    key = 0
    for block_start in range(0, events, _BLOCK):
        rng = _rng(seed, "events", block_start // _BLOCK)
        for position in range(block_start, min(block_start + _BLOCK, events)):
            # about one key in eight is skipped: the original's index is not contiguous
            key += 1 + (rng.randrange(1, 4) if rng.random() < 0.12 else 0)
            yield _event(rng, seed, position, key)


def _count(conn: sa.Connection, table: sa.Table) -> int:
    return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


class SourceNotEmptyError(ValueError):
    """The source tables already hold rows, and nobody said to replace them."""

    def __init__(self, held: dict[str, int]):
        self.held = held
        rows = ", ".join(f"{name}={count:,}" for name, count in held.items())
        super().__init__(f"the source database already holds rows ({rows}); left untouched. "
                         "Seeding drops and recreates the three tables only when told to "
                         "(`pinterest-platform seed --replace`, or the asset's `replace: true`).")


def source_rows_held(url: str) -> dict[str, int]:
    """Rows in each source table at `url` (0 for a table that does not exist)."""
    metadata = sa.MetaData()
    tables = source_tables(metadata)
    engine = source_engine(url)
    try:
        with engine.connect() as conn:
            existing = set(sa.inspect(conn).get_table_names())
            return {name: (_count(conn, table) if name in existing else 0) for name, table in tables.items()}
    finally:
        engine.dispose()


def seed_source_database(url: str, events: int, seed: int = 0, progress: bool = True,
                         replace: bool = False) -> dict[str, int]:
    """Create the three source tables at `url` and fill them with `events` events; returns rows per table.

    Tables that already hold rows are never touched unless `replace=True`, which drops and recreates them
    (SourceNotEmptyError otherwise): a source database may be someone's real data."""
    if events < 0:
        raise ValueError(f"events must be >= 0, got {events}")
    metadata = sa.MetaData()
    tables = source_tables(metadata)
    engine = source_engine(url)
    try:
        with engine.begin() as conn:
            if replace:
                metadata.drop_all(conn)
            metadata.create_all(conn)
            if not replace:
                held = {name: _count(conn, table) for name, table in tables.items()}
                if any(held.values()):
                    raise SourceNotEmptyError(held)

        pin_t, geo_t, user_t = tables[SOURCE_PIN_TABLE], tables[SOURCE_GEO_TABLE], tables[SOURCE_USER_TABLE]
        pins: list[dict] = []
        geos: list[dict] = []
        users: list[dict] = []

        def flush(conn: sa.Connection) -> None:
            # one executemany per table with bound parameters; commit per chunk keeps the journal small
            for table, rows in ((pin_t, pins), (geo_t, geos), (user_t, users)):
                if rows:
                    conn.execute(sa.insert(table), rows)
                    rows.clear()
            conn.commit()

        with engine.connect() as conn, tqdm(total=events, unit="event", unit_scale=True,
                                            desc="seeding source", disable=not progress) as bar:
            for pin, geo, user in generate_events(events, seed):
                pins.append(pin)
                geos.append(geo)
                users.append(user)
                if len(pins) >= CHUNK_SIZE:
                    bar.update(len(pins))
                    flush(conn)
            bar.update(len(pins))
            flush(conn)
            return {name: _count(conn, table) for name, table in tables.items()}
    finally:
        engine.dispose()
