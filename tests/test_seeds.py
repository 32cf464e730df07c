import math

from nbhelpers import seeds


def test_summary_and_pm():
    assert seeds.summary([1.0, 3.0]) == {"mean": 2.0, "sd": math.sqrt(2), "n": 2}
    assert seeds.pm([1.0]) == "1.00" and seeds.pm([]) == "—" and seeds.pm([1.0, 3.0], 1) == "2.0 ± 1.4"


def test_differ_needs_two_seeds_and_uses_the_spread():
    assert not seeds.differ([1.0], [2.0])["known"]
    c = seeds.differ([90.0, 90.2, 89.8], [95.0, 95.2, 94.8])
    assert c["significant"] and c["diff"] > 4.9
    assert "helps" in seeds.matters(c) and seeds.beats(c, "x").startswith("beats x")
    noisy = seeds.differ([80.0, 90.0], [82.0, 91.0])
    assert not noisy["significant"] and "no difference" in seeds.matters(noisy)
    assert "within seed noise" in seeds.beats(noisy, "x")
    assert "one seed" in seeds.matters(seeds.differ([1.0], [1.0, 2.0]))


def test_within_a_published_number():
    w = seeds.within([97.5, 97.7], 97.87, 0.5)
    assert w["ok"] and seeds.within_word(w).startswith("within noise")
    assert not seeds.within([96.0], 97.87, 0.5)["ok"]
    assert seeds.within_word(seeds.within([], 97.87, 0.5)) == "—"
