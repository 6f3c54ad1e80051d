"""The simulator has teeth: each deliberately broken variant is caught within a bounded number
of seeds (the seeds are fixed, so this is deterministic)."""

from __future__ import annotations

import pytest

from paxos_broken import LIVENESS_VARIANTS, VARIANTS
from paxos_sim import Sim, Violation

MAX_SEEDS = 300


def first_violation(max_seeds: int, **variant) -> tuple[int, str] | None:
    for seed in range(max_seeds):
        try:
            Sim(seed, **variant).run()
        except Violation as e:
            return seed, str(e)
    return None


@pytest.mark.parametrize("name", list(VARIANTS))
def test_broken_variant_is_caught(name: str) -> None:
    found = first_violation(MAX_SEEDS, **VARIANTS[name])
    assert found is not None, f"{name}: no violation in {MAX_SEEDS} seeds"
    print(f"{name}: caught at seed {found[0]}: {found[1]}")


@pytest.mark.parametrize("name", list(LIVENESS_VARIANTS))
def test_liveness_variant_is_caught(name: str) -> None:
    found = first_violation(MAX_SEEDS, **LIVENESS_VARIANTS[name])
    assert found is not None, f"{name}: no violation in {MAX_SEEDS} seeds"
    assert "liveness" in found[1]
    print(f"{name}: caught at seed {found[0]}: {found[1]}")
