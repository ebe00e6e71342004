import pytest

from compress.core.schedules import anneal_count, parse_duration
from compress.errors import UserError


@pytest.mark.parametrize("mu", [0, 1, 10, 100])
def test_anneal_starts_at_m_reaches_k_at_half_and_decreases(mu):
    M, k, N = 5000, 24, 100
    counts = [anneal_count(M, k, e, N, mu) for e in range(N + 1)]
    assert counts[0] == M
    assert counts[N // 2] == k and counts[-1] == k
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    assert all(c > k for c in counts[: N // 2 - 1])


def test_larger_mu_prunes_earlier():
    assert anneal_count(1000, 10, 10, 100, 100) < anneal_count(1000, 10, 10, 100, 1) \
        < anneal_count(1000, 10, 10, 100, 0)
    # mu = 0 is linear: halfway to N/2 is halfway to k
    assert anneal_count(1000, 0, 25, 100, 0) == 500


def test_durations():
    assert parse_duration("150ep").steps(10) == 1500
    assert parse_duration("400it").steps(10) == 400
    assert parse_duration(3).unit == "ep"
    with pytest.raises(UserError):
        parse_duration("3 weeks")
