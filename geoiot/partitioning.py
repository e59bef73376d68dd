"""Which partition a track's messages go to; every message of a track goes to the same one.

``hash`` is Kafka's own default partitioner (murmur2 of the key bytes, as the Java client and
aiokafka compute it), so any other producer keyed by track id agrees. ``balanced`` gives each new
track the partition that has received the fewest messages so far, which keeps partitions within a
few percent of each other when tracks outnumber partitions and track lengths are alike.
"""

from __future__ import annotations

from aiokafka.partitioner import murmur2


def kafka_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for a non-empty key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class Partitioner:
    """Remembers each track's partition (murmur2 is slow in Python; tracks repeat a lot)."""

    name = "base"

    def __init__(self, partitions: int) -> None:
        if partitions < 1:
            raise ValueError("a topic has at least one partition")
        self.partitions = partitions
        self.assigned: dict[bytes, int] = {}
        self.load = [0] * partitions  # messages routed to each partition

    def __call__(self, key: bytes) -> int:
        p = self.assigned.get(key)
        if p is None:
            p = self.assigned[key] = self._choose(key)
        self.load[p] += 1
        return p

    def _choose(self, key: bytes) -> int:
        raise NotImplementedError


class HashPartitioner(Partitioner):
    name = "hash"

    def _choose(self, key: bytes) -> int:
        return kafka_partition(key, self.partitions)


class BalancedPartitioner(Partitioner):
    name = "balanced"

    def _choose(self, key: bytes) -> int:
        # Least-loaded partition; ties go to the lowest partition number (deterministic).
        load = self.load
        return min(range(self.partitions), key=load.__getitem__)


PARTITIONERS: dict[str, type[Partitioner]] = {"hash": HashPartitioner, "balanced": BalancedPartitioner}


def make_partitioner(name: str, partitions: int) -> Partitioner:
    try:
        return PARTITIONERS[name](partitions)
    except KeyError:
        raise ValueError(f"unknown partitioner {name!r}; use one of {', '.join(PARTITIONERS)}") from None
