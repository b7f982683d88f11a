"""The distributions of random search: supports, reproducibility, the --sample form."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from notebook_exp.exceptions import ConfigError
from notebook_exp.space import choice, loguniform, parse, randint, uniform

DRAWS = 4000


def _draws(dist, seed: int = 0) -> list:
    rng = random.Random(seed)
    return [dist.sample(rng) for _ in range(DRAWS)]


def test_uniform_stays_in_its_range_and_is_flat():
    values = _draws(uniform(-2.0, 6.0))
    assert all(-2.0 <= v <= 6.0 for v in values)
    assert sum(values) / DRAWS == pytest.approx(2.0, abs=0.15)  # the mean of U(-2, 6)
    quarters = Counter(int((v + 2.0) // 2.0) for v in values)
    assert all(abs(quarters[q] - DRAWS / 4) < DRAWS * 0.04 for q in range(4)), quarters


def test_loguniform_is_flat_per_decade():
    values = _draws(loguniform(1e-5, 1e-1))
    assert all(1e-5 <= v <= 1e-1 for v in values)
    decades = Counter(min(3, int(math.log10(v / 1e-5))) for v in values)
    assert all(abs(decades[d] - DRAWS / 4) < DRAWS * 0.04 for d in range(4)), decades
    assert sum(v < 1e-3 for v in values) / DRAWS == pytest.approx(0.5, abs=0.04)  # below the geometric mean


def test_randint_excludes_its_top_and_choice_picks_evenly():
    ints = Counter(_draws(randint(3, 7)))
    assert set(ints) == {3, 4, 5, 6} and all(isinstance(v, int) for v in ints)
    assert all(abs(n - DRAWS / 4) < DRAWS * 0.04 for n in ints.values()), ints
    picked = Counter(map(tuple, _draws(choice([[32, 32], [64, 64]]))))
    assert set(picked) == {(32, 32), (64, 64)} and abs(picked[(32, 32)] - DRAWS / 2) < DRAWS * 0.04
    assert choice(["a", "b"]).grid_values() == ["a", "b"]


def test_same_seed_same_draws():
    dist = loguniform(1e-4, 1.0)
    assert _draws(dist, seed=7) == _draws(dist, seed=7)
    assert _draws(dist, seed=7) != _draws(dist, seed=8)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: uniform(1.0, 1.0), "low < high"),
    (lambda: loguniform(0.0, 1.0), "0 < low < high"),
    (lambda: randint(1.5, 3), "integers"),
    (lambda: randint(3, 3), "low < high"),
    (lambda: choice([]), "at least one value"),
    (lambda: choice("abc"), "a list of values"),
    (lambda: uniform(float("nan"), 1.0), "finite"),
])
def test_bad_distributions_raise_config_error(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_parse_reads_the_magic_form():
    assert parse("optim.lr=loguniform(1e-5,1e-1)") == ("optim.lr", loguniform(1e-5, 1e-1))
    assert parse("depth = randint(2, 8)") == ("depth", randint(2, 8))
    assert parse("opt=choice('adam','sgd')") == ("opt", choice(["adam", "sgd"]))
    assert parse("layers=choice([[32,32],[64,64]])") == ("layers", choice([[32, 32], [64, 64]]))
    assert parse("opt=choice('adam')") == ("opt", choice(["adam"]))
    assert repr(parse("x=uniform(0,1)")[1]) == "uniform(0, 1)"
    assert uniform(0, 1).describe() == {"kind": "uniform", "low": 0, "high": 1}


@pytest.mark.parametrize(("text", "message"), [
    ("lr", "KEY=DISTRIBUTION"),
    ("1x=uniform(0,1)", "KEY=DISTRIBUTION"),
    ("lr=normal(0,1)", "is not one of"),
    ("lr=uniform(a,1)", "must be literals"),
    ("lr=uniform(1)", "takes two arguments"),
    ("lr=loguniform(0,1)", "--sample lr: loguniform"),
])
def test_parse_errors_are_one_line(text, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse(text)
    assert "\n" not in str(info.value)
