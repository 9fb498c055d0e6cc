"""An in-memory Kinesis client with the behaviour of the real service that moto lacks.

moto keeps routing records to a shard after splitting it, never ends a closed shard's iterator, never
expires iterators and never throttles. This fake does all four, so the source's resharding, expiry and
backoff paths are tested against the documented semantics:

- sequence numbers are 56-digit decimals increasing within a shard;
- a split or merge closes the parent(s) (EndingSequenceNumber set) and new records go to the children;
- GetRecords on a closed shard read to its end returns no NextShardIterator;
- `expire_every=N`: every N-th GetRecords call fails with ExpiredIteratorException;
- `throttle_every=N`: every N-th GetRecords/ListShards call fails with ProvisionedThroughputExceededException
  (LimitExceededException for ListShards);
- `on_get_records`: a hook run before each GetRecords (a producer that never stops);
- `trim(stream, shard, n)` drops a shard's n oldest records (retention), for data-loss tests.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from botocore.exceptions import ClientError

BASE_SEQ = 49_590_338_271_490_256_608_559_692_538_361_571_095_921_575_989_136_588_898


def _error(code: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"fake {code}"}}, operation)


@dataclass
class FakeShard:
    shard_id: str
    hash_start: int
    hash_end: int
    parent: str | None = None
    adjacent_parent: str | None = None
    records: list[dict] = field(default_factory=list)
    trimmed: int = 0          # records[:trimmed] are gone (past retention)
    ending: int | None = None  # EndingSequenceNumber once closed
    starting: int = 0

    @property
    def closed(self) -> bool:
        return self.ending is not None

    def describe(self) -> dict:
        shard = {"ShardId": self.shard_id,
                 "HashKeyRange": {"StartingHashKey": str(self.hash_start), "EndingHashKey": str(self.hash_end)},
                 "SequenceNumberRange": {"StartingSequenceNumber": str(self.starting)}}
        if self.parent:
            shard["ParentShardId"] = self.parent
        if self.adjacent_parent:
            shard["AdjacentParentShardId"] = self.adjacent_parent
        if self.closed:
            shard["SequenceNumberRange"]["EndingSequenceNumber"] = str(self.ending)
        return shard


class FakeKinesis:
    def __init__(self, expire_every: int | None = None, throttle_every: int | None = None, page_size: int = 2):
        self.streams: dict[str, list[FakeShard]] = {}
        self.expire_every = expire_every
        self.throttle_every = throttle_every
        self.page_size = page_size  # ListShards page size, small so NextToken paging is exercised
        self.calls: dict[str, int] = {"get_records": 0, "list_shards": 0, "get_shard_iterator": 0,
                                      "throttled": 0, "expired": 0}
        self._seq = itertools.count(1)
        self._shard_numbers: dict[str, itertools.count] = {}
        self._iterators: dict[str, tuple[str, str, int]] = {}  # token -> (stream, shard, next index)
        self._tokens = itertools.count(1)
        self._clock = datetime.now(timezone.utc)
        self.on_get_records = None  # called before each GetRecords, e.g. to emulate a busy producer

    # --- test controls ----------------------------------------------------------------------------

    def create_stream(self, name: str, shards: int) -> None:
        self._shard_numbers[name] = itertools.count()
        step = 2**128 // shards
        self.streams[name] = [
            self._new_shard(name, i * step, (i + 1) * step - 1 if i < shards - 1 else 2**128 - 1)
            for i in range(shards)]

    def _new_shard(self, stream: str, start: int, end: int, **parents) -> FakeShard:
        number = next(self._shard_numbers[stream])
        return FakeShard(f"shardId-{number:012d}", start, end, starting=BASE_SEQ + next(self._seq), **parents)

    def shard(self, stream: str, shard_id: str) -> FakeShard:
        return next(s for s in self.streams[stream] if s.shard_id == shard_id)

    def open_shards(self, stream: str) -> list[FakeShard]:
        return [s for s in self.streams[stream] if not s.closed]

    def put(self, stream: str, data: bytes, key: str) -> tuple[str, str]:
        import hashlib

        h = int(hashlib.md5(key.encode()).hexdigest(), 16)
        shard = next(s for s in self.open_shards(stream) if s.hash_start <= h <= s.hash_end)
        seq = BASE_SEQ + next(self._seq) * 7
        # arrival times follow the wall clock (the source compares them with its own) and strictly increase
        self._clock = max(datetime.now(timezone.utc), self._clock + timedelta(microseconds=1))
        shard.records.append({"SequenceNumber": str(seq), "Data": data, "PartitionKey": key,
                              "ApproximateArrivalTimestamp": self._clock})
        return shard.shard_id, str(seq)

    def _close(self, shard: FakeShard) -> None:
        shard.ending = int(shard.records[-1]["SequenceNumber"]) if shard.records else shard.starting

    def split(self, stream: str, shard_id: str) -> tuple[str, str]:
        parent = self.shard(stream, shard_id)
        mid = (parent.hash_start + parent.hash_end) // 2
        self._close(parent)
        a = self._new_shard(stream, parent.hash_start, mid, parent=shard_id)
        b = self._new_shard(stream, mid + 1, parent.hash_end, parent=shard_id)
        self.streams[stream] += [a, b]
        return a.shard_id, b.shard_id

    def merge(self, stream: str, shard_a: str, shard_b: str) -> str:
        a, b = self.shard(stream, shard_a), self.shard(stream, shard_b)
        self._close(a)
        self._close(b)
        child = self._new_shard(stream, min(a.hash_start, b.hash_start), max(a.hash_end, b.hash_end),
                                parent=shard_a, adjacent_parent=shard_b)
        self.streams[stream].append(child)
        return child.shard_id

    def trim(self, stream: str, shard_id: str, n: int) -> None:
        shard = self.shard(stream, shard_id)
        shard.trimmed = max(shard.trimmed, n)

    def all_records(self, stream: str) -> list[tuple[str, str, bytes]]:
        return [(s.shard_id, r["SequenceNumber"], r["Data"]) for s in self.streams[stream] for r in s.records]

    # --- the boto3 surface the source uses -------------------------------------------------------------

    def _maybe_throttle(self, operation: str, code: str) -> None:
        n = self.calls[operation]
        if self.throttle_every and n % self.throttle_every == 0:
            self.calls["throttled"] += 1
            raise _error(code, operation)

    def list_shards(self, StreamName: str | None = None, NextToken: str | None = None, **_):
        self.calls["list_shards"] += 1
        self._maybe_throttle("list_shards", "LimitExceededException")
        if NextToken is not None:
            if StreamName is not None:
                raise _error("InvalidArgumentException", "ListShards")
            StreamName, offset = NextToken.rsplit("|", 1)
            offset = int(offset)
        else:
            offset = 0
        if StreamName not in self.streams:
            raise _error("ResourceNotFoundException", "ListShards")
        shards = self.streams[StreamName]
        page = [s.describe() for s in shards[offset:offset + self.page_size]]
        answer = {"Shards": page}
        if offset + self.page_size < len(shards):
            answer["NextToken"] = f"{StreamName}|{offset + self.page_size}"
        return answer

    def get_shard_iterator(self, StreamName: str, ShardId: str, ShardIteratorType: str,
                           StartingSequenceNumber: str | None = None, Timestamp: datetime | None = None):
        self.calls["get_shard_iterator"] += 1
        shard = self.shard(StreamName, ShardId)
        if ShardIteratorType == "TRIM_HORIZON":
            index = 0
        elif ShardIteratorType == "AFTER_SEQUENCE_NUMBER":
            after = int(StartingSequenceNumber)
            index = next((i for i, r in enumerate(shard.records) if int(r["SequenceNumber"]) > after),
                         len(shard.records))
        elif ShardIteratorType == "AT_TIMESTAMP":
            index = next((i for i, r in enumerate(shard.records) if r["ApproximateArrivalTimestamp"] >= Timestamp),
                         len(shard.records))
        elif ShardIteratorType == "LATEST":
            index = len(shard.records)
        else:
            raise _error("InvalidArgumentException", "GetShardIterator")
        return {"ShardIterator": self._token(StreamName, ShardId, index)}

    def _token(self, stream: str, shard_id: str, index: int) -> str:
        token = f"it-{next(self._tokens)}"
        self._iterators[token] = (stream, shard_id, index)
        return token

    def get_records(self, ShardIterator: str, Limit: int = 10000):
        self.calls["get_records"] += 1
        if self.on_get_records is not None:
            self.on_get_records()
        self._maybe_throttle("get_records", "ProvisionedThroughputExceededException")
        if self.expire_every and self.calls["get_records"] % self.expire_every == 0:
            self.calls["expired"] += 1
            raise _error("ExpiredIteratorException", "GetRecords")
        stream, shard_id, index = self._iterators.pop(ShardIterator)
        shard = self.shard(stream, shard_id)
        index = max(index, shard.trimmed)
        records = shard.records[index:index + Limit]
        next_index = index + len(records)
        remaining = max(0, len(shard.records) - next_index)
        answer = {"Records": [dict(r) for r in records], "MillisBehindLatest": 1000 if remaining else 0}
        if not (shard.closed and remaining == 0):
            answer["NextShardIterator"] = self._token(stream, shard_id, next_index)
        return answer
