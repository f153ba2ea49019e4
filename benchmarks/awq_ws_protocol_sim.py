"""A model of ``awq_ws.cu``'s shared-memory ring protocol, run under random scheduling (CPU, no GPU needed).

    python benchmarks/awq_ws_protocol_sim.py

The loader warp and the ``P`` consumer warps are generators stepped in random order; each bulk copy is in flight
until a random step lands it (its bytes counted on the stage's full mbarrier, as ``complete_tx`` does). Barriers
follow PTX mbarrier phases: a phase completes when its pending arrivals and its transaction count both reach zero,
and ``try_wait.parity(p)`` succeeds once the phase of parity ``p`` has completed. Checked for every (P, S, K parts,
blocks of K, seed): no deadlock, every consumer reads a slot only after the copy of its own block landed there, and
each block of the part is consumed exactly once. Mirrors the kernel's index arithmetic line for line
(``stages``, ``slot``, ``fill``, ``nb``, the parities); a change to one belongs in the other.
"""

from __future__ import annotations

import random

ROWS = 16  # weight rows a block (one bulk copy each a stage)


class MBarrier:
    def __init__(self, count: int) -> None:
        self.count, self.pending, self.tx, self.phase = count, count, 0, 0

    def arrive(self, expect_tx: int = 0) -> None:
        self.tx += expect_tx
        self.pending -= 1
        self._advance()

    def complete_tx(self, nbytes: int) -> None:
        self.tx -= nbytes
        self._advance()

    def _advance(self) -> None:
        if self.pending == 0 and self.tx == 0:
            self.phase += 1
            self.pending = self.count

    def try_wait_parity(self, parity: int) -> bool:
        return (self.phase & 1) != parity  # the phase of that parity has completed


def run(P: int, S: int, nblk: int, cs: int, part: int, seed: int) -> None:
    rnd = random.Random(seed)
    s0, s1 = part * nblk // cs, (part + 1) * nblk // cs
    stages = (s1 - s0 + P - 1) // P
    full = [MBarrier(1) for _ in range(S)]
    empty = [MBarrier(P) for _ in range(S)]
    landed = [[[None] * P for _ in range(ROWS)] for _ in range(S)]  # block whose bytes a (slot, row, place) holds
    in_flight: list[tuple[int, int, int, int]] = []
    consumed: dict[int, int] = {}

    def loader():
        for st in range(stages):
            slot, fill = st % S, st // S
            if fill > 0:
                while not empty[slot].try_wait_parity((fill - 1) & 1):
                    yield
            b = s0 + st * P
            nb = min(P, s1 - b)
            full[slot].arrive(expect_tx=ROWS * 64 * nb)
            in_flight.extend((slot, row, b, nb) for row in range(ROWS))
            yield

    def consumer(c: int):
        for st in range(stages):
            slot, fill = st % S, st // S
            b = s0 + st * P + c
            while not full[slot].try_wait_parity(fill & 1):
                yield
            if b < s1:
                for row in range(ROWS):
                    if landed[slot][row][c] != b:
                        raise AssertionError(f"consumer {c} read slot {slot} row {row}: block "
                                             f"{landed[slot][row][c]}, not {b}")
                consumed[b] = consumed.get(b, 0) + 1
            yield
            empty[slot].arrive()

    def copy_engine():
        while True:
            if in_flight and rnd.random() < 0.5:
                slot, row, b, nb = in_flight.pop(rnd.randrange(len(in_flight)))
                for k in range(nb):
                    landed[slot][row][k] = b + k
                full[slot].complete_tx(64 * nb)
            yield

    warps = [loader()] + [consumer(c) for c in range(P)]
    alive, engine = list(range(len(warps))), copy_engine()
    for _ in range(10**6):
        if not alive:
            break
        if rnd.random() < 0.3:
            next(engine)
            continue
        i = rnd.choice(alive)
        try:
            next(warps[i])
        except StopIteration:
            alive.remove(i)
    else:
        raise AssertionError(f"deadlock: P={P} S={S} nblk={nblk} cs={cs} part={part} seed={seed}")
    if in_flight:
        raise AssertionError("copies still in flight when every warp has finished")
    if sorted(consumed) != list(range(s0, s1)) or any(v != 1 for v in consumed.values()):
        raise AssertionError(f"blocks consumed {consumed}, expected each of {s0}..{s1 - 1} once")


def main() -> None:
    runs = 0
    for P, S, cs in ((4, 4, 1), (4, 6, 1), (8, 3, 1), (2, 8, 1), (4, 4, 2), (4, 3, 3), (3, 2, 1), (1, 1, 1)):
        for nblk in (9, 16, 40, 108):
            for part in range(cs):
                for seed in range(30):
                    run(P, S, nblk, cs, part, seed)
                    runs += 1
    print(f"ok: {runs} runs, no deadlock, no stale read, every block consumed once")


if __name__ == "__main__":
    main()
