"""Links between data centers: latency, jitter, loss and the faults laid over them.

A link is directed (DC1 -> DC2 may be cut while DC2 -> DC1 still works). Its
base behaviour comes from its class in the topology (intra-DC, same city,
cross-region); faults add cuts, extra latency and extra loss on top and take
them away again when they heal, so overlapping faults compose. A message's
delay is the class latency plus Gaussian jitter plus, for every loss drawn,
one retransmission timeout: TCP under the replication stream resends, so
loss shows up as latency, not as a missing message.
"""

from __future__ import annotations

import random

from .model import Topology


class Network:
    def __init__(self, topology: Topology, rng: random.Random) -> None:
        self.topology = topology
        self.rng = rng
        self.names = topology.dc_names
        self.version = 0  # bumped on every change, for callers' caches
        self.cuts: dict[tuple[str, str], int] = {}
        self.extra_latency_ns: dict[tuple[str, str], int] = {}
        self.extra_loss: dict[tuple[str, str], float] = {}
        self.base = {
            (first, second): topology.link_class(first, second)
            for first in self.names
            for second in self.names
        }

    def up(self, source: str, target: str) -> bool:
        return source == target or self.cuts.get((source, target), 0) == 0

    def both_up(self, first: str, second: str) -> bool:
        return self.up(first, second) and self.up(second, first)

    def latency_ns(self, source: str, target: str) -> int:
        """The typical one-way delay now (no jitter, no loss): for client paths."""
        return self.base[(source, target)].latency_ns + self.extra_latency_ns.get(
            (source, target), 0
        )

    def sample_ns(self, source: str, target: str) -> int:
        """One message's delay: latency, jitter, and a retransmission timeout per loss."""
        link = self.base[(source, target)]
        delay = link.latency_ns + self.extra_latency_ns.get((source, target), 0)
        if link.jitter_ns:
            delay += abs(round(self.rng.gauss(0.0, link.jitter_ns)))
        loss = link.loss + self.extra_loss.get((source, target), 0.0)
        if loss > 0:
            retransmits = 0
            while self.rng.random() < loss and retransmits < 16:
                retransmits += 1
            delay += retransmits * link.retransmit_ns
        return delay

    def transfer_ns(self, source: str, target: str, size_bytes: int) -> int:
        """How long a state transfer of `size_bytes` takes over the link."""
        link = self.base[(source, target)]
        return link.latency_ns + round(size_bytes / link.bandwidth_bytes_per_s * 1e9)

    # --- faults -------------------------------------------------------------------

    def pairs(self, target: str, direction: str) -> list[tuple[str, str]]:
        """Directed DC pairs named by a fault target "x-y" (DCs or regions)."""
        left_name, _, right_name = target.partition("-")
        left, right = self.side(left_name), self.side(right_name)
        pairs: list[tuple[str, str]] = []
        for first in left:
            for second in right:
                if first == second:
                    continue
                if direction in ("both", "forward"):
                    pairs.append((first, second))
                if direction in ("both", "backward"):
                    pairs.append((second, first))
        return pairs

    def side(self, name: str) -> list[str]:
        if name in self.topology.data_centers:
            return [name]
        members = [dc.name for dc in self.topology.data_centers.values() if dc.region == name]
        assert members, f"no data center or region named {name!r}"
        return members

    def cut(self, pairs: list[tuple[str, str]], delta: int) -> None:
        self.version += 1
        for pair in pairs:
            self.cuts[pair] = self.cuts.get(pair, 0) + delta
            assert self.cuts[pair] >= 0, pair

    def degrade(
        self, pairs: list[tuple[str, str]], latency_ns: int, loss: float, sign: int
    ) -> None:
        self.version += 1
        for pair in pairs:
            self.extra_latency_ns[pair] = self.extra_latency_ns.get(pair, 0) + sign * latency_ns
            self.extra_loss[pair] = max(0.0, self.extra_loss.get(pair, 0.0) + sign * loss)
