"""escort_tf.timing: interleaved repetitions, budgets and the decisive-margin stop."""

import itertools

import pytest

from escort_tf import timing


@pytest.fixture
def scripted(monkeypatch):
    """Makes each variant's samples come from a script: name -> cycle of seconds."""
    scripts = {}

    def fake_sample_s(fn, inner):
        return next(scripts[fn()])

    monkeypatch.setattr(timing, "_sample_s", fake_sample_s)

    def make(**seconds):
        scripts.update({name: itertools.cycle(values) for name, values in seconds.items()})
        return {name: (lambda name=name: name) for name in seconds}
    return make


def test_clear_winner_stops_after_min_reps(scripted):
    fns = scripted(sparse=[0.010], dense=[0.020])
    times = timing.time_side_by_side(fns, reps=10, warmup=1, decisive_ratio=1.25)
    assert times["sparse"]["reps"] == times["dense"]["reps"] == 3
    assert times["sparse"]["median_ms"] == pytest.approx(10.0)
    assert times["dense"]["median_ms"] == pytest.approx(20.0)


def test_close_variants_get_every_rep(scripted):
    fns = scripted(sparse=[0.010], dense=[0.011])
    times = timing.time_side_by_side(fns, reps=10, warmup=1, decisive_ratio=1.25)
    assert times["sparse"]["reps"] == times["dense"]["reps"] == 10


def test_one_slow_sample_of_the_winner_keeps_timing(scripted):
    # The winner's median is far ahead, but one sample overlaps the loser's range.
    fns = scripted(sparse=[0.010, 0.030, 0.010, 0.010], dense=[0.020])
    times = timing.time_side_by_side(fns, reps=10, warmup=1, decisive_ratio=1.25)
    assert times["sparse"]["reps"] == 10
    assert times["sparse"]["median_ms"] == pytest.approx(10.0)


def test_every_other_variant_must_be_beaten(scripted):
    fns = scripted(a=[0.010], b=[0.030], c=[0.0115])
    times = timing.time_side_by_side(fns, reps=8, warmup=1, decisive_ratio=1.25)
    assert {t["reps"] for t in times.values()} == {8}


def test_without_a_ratio_all_reps_run(scripted):
    fns = scripted(sparse=[0.010], dense=[0.100])
    times = timing.time_side_by_side(fns, reps=7, warmup=1)
    assert times["sparse"]["reps"] == times["dense"]["reps"] == 7


def test_budget_cuts_reps_but_not_below_min_reps(scripted):
    fns = scripted(sparse=[0.010], dense=[0.010])
    times = timing.time_side_by_side(fns, reps=10, warmup=1, budget_s=0.001, min_reps=3)
    assert times["sparse"]["reps"] == 3


@pytest.mark.parametrize("min_sample_s, calls_per_rep", [(0.002, 2), (0.005, 5), (1.0, 50)])
def test_min_sample_sets_calls_per_sample(scripted, min_sample_s, calls_per_rep):
    # The warm-up sample says a call takes 1 ms: a sample repeats it up to
    # min_sample_s, at most 50 times.
    fns = scripted(fast=[0.001])
    times = timing.time_side_by_side(fns, reps=3, warmup=1, min_sample_s=min_sample_s)
    assert times["fast"]["calls_per_rep"] == calls_per_rep
