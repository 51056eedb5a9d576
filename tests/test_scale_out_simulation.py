"""benchmarks/simulate_scale_out.py against closed forms in its limiting cases: planner-bound, worker-CPU-bound,
driver-bound and one case at a time; and its table as printed."""

from __future__ import annotations

import math

import pytest

from benchmarks.simulate_scale_out import Costs, main, simulate, table

FREE = {"client_cpu_ms": 0.0, "ray_overhead_ms": 0.0, "driver_cpu_ms": 0.0, "ray_latency_ms": 0.0}


@pytest.mark.parametrize(("cases", "calls", "replicas", "slots"), [(64, 2, 2, 4), (60, 3, 2, 4), (500, 1, 3, 7)])
def test_planner_bound_wall_is_whole_waves_of_all_slots(cases: int, calls: int, replicas: int, slots: int) -> None:
    costs = Costs(cases=cases, calls=calls, latency_s=0.5, replicas=replicas, slots=slots, in_flight=1000, **FREE)
    expected = math.ceil(cases * calls / (replicas * slots)) * 0.5
    for workers in (1, 4, 64):
        outcome = simulate(costs, workers)
        assert outcome.wall_s == pytest.approx(expected), workers
        assert outcome.planner_busy == pytest.approx(cases * calls * 0.5 / (replicas * slots * expected))


@pytest.mark.parametrize(("cases", "workers"), [(100, 4), (102, 4), (7, 16)])
def test_worker_cpu_bound_wall_is_the_busiest_workers_cases(cases: int, workers: int) -> None:
    costs = Costs(cases=cases, calls=2, latency_s=0.0, replicas=1, slots=10_000, in_flight=10_000,
                  **{**FREE, "client_cpu_ms": 10.0, "ray_overhead_ms": 4.0})
    outcome = simulate(costs, workers)
    assert outcome.wall_s == pytest.approx(math.ceil(cases / workers) * 0.014)
    # one worker is one process: no Ray overhead
    assert simulate(costs, 1).wall_s == pytest.approx(cases * 0.010)


def test_a_driver_bound_run_takes_the_drivers_cpu_for_every_case() -> None:
    costs = Costs(cases=400, calls=1, latency_s=0.1, replicas=100, slots=100, in_flight=1000,
                  **{**FREE, "client_cpu_ms": 10.0, "driver_cpu_ms": 5.0})
    outcome = simulate(costs, 64)
    per_case_elsewhere = 0.1 + 0.005  # the case's call and its share of CPU on its worker
    assert 400 * 0.005 <= outcome.wall_s <= 400 * 0.005 + per_case_elsewhere + 1e-9
    assert outcome.driver_busy > 0.95


def test_one_case_in_flight_runs_them_one_after_the_other() -> None:
    costs = Costs(cases=20, calls=3, latency_s=0.2, replicas=4, slots=4, in_flight=1,
                  **{**FREE, "client_cpu_ms": 30.0})
    assert simulate(costs, 1).wall_s == pytest.approx(20 * (3 * 0.2 + 0.030))


def test_the_table_stops_scaling_where_the_planner_saturates(capsys: pytest.CaptureFixture[str]) -> None:
    costs = Costs(cases=2048, replicas=1, slots=16)  # 16 calls/s, less than even one worker's CPU allows
    rows = table(costs)
    assert [row["workers"] for row in rows] == [1, 4, 16, 64]
    assert rows[0]["efficiency"] == 1.0 and rows[0]["bound"] == "planner"
    assert all(row["bound"] == "planner" for row in rows) and rows[-1]["efficiency"] < 0.05
    main(["--cases", "512", "--workers", "1", "4"])
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].startswith("workers | wall_s") and len(printed) == 4


def test_costs_are_bounded() -> None:
    with pytest.raises(ValueError):
        Costs(cases=0)
    with pytest.raises(ValueError):
        simulate(Costs(), 0)
