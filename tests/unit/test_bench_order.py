"""Benchmarks that compare variants run them interleaved in an order rotated by repeat (``_runs.rotated``):
over as many repeats as there are variants, each variant runs once in each place of the sequence, so a run's
place (measured: the 2nd and 3rd of three identical runs in a row ~4 % slower than the 1st) is charged to no
variant in particular."""
from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

_spec = importlib.util.spec_from_file_location(  # benchmarks/ is not a package: loaded by path, under its own name
    "bench_runs_under_test", Path(__file__).resolve().parents[2] / "benchmarks" / "_runs.py")
assert _spec is not None and _spec.loader is not None
_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_runs)
rotated = _runs.rotated


def test_every_variant_runs_once_in_every_place_over_as_many_repeats_as_variants():
    variants = [("fault-free", []), ("spare", ["s"]), ("kill", ["k"]), ("full", ["f"]), ("rep", ["r"])]
    places = Counter()
    for k in range(len(variants)):
        order = rotated(variants, k)
        assert sorted(i for i, _ in order) == list(range(len(variants))), "each variant once per repeat"
        assert all(variants[i] is v for i, v in order), "indices name the variant they come with"
        places.update((pos, i) for pos, (i, _) in enumerate(order))
    assert set(places.values()) == {1} and len(places) == len(variants) ** 2
    assert [i for i, _ in rotated(variants, 7)] == [2, 3, 4, 0, 1]
    assert [v for _, v in rotated(["true", "false"], 1)] == ["false", "true"]
