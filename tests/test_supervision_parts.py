"""Shared supervision parts: the restart policy (doubling waits to a ceiling, reset by health) and the
one table of the loop's jobs."""

from __future__ import annotations

from evolvd.restart_backoff import RestartBackoff


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_waits_double_to_the_ceiling_while_the_part_keeps_failing() -> None:
    clock = Clock()
    backoff = RestartBackoff(initial_s=1.0, max_s=5.0, healthy_after_s=60.0, clock=clock)
    delays = []
    for _ in range(5):
        delays.append(backoff.next_delay())
        clock.now += 2.0  # fails again soon after each restart
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_a_part_healthy_long_enough_starts_again_from_the_shortest_wait() -> None:
    clock = Clock()
    backoff = RestartBackoff(initial_s=1.0, max_s=60.0, healthy_after_s=60.0, clock=clock)
    assert [backoff.next_delay() for _ in range(3)] == [1.0, 2.0, 4.0]
    clock.now += 61.0  # ran a minute without failing: the next failure is not a crash loop
    assert backoff.next_delay() == 1.0
    assert backoff.next_delay() == 2.0


def test_a_health_report_resets_the_wait() -> None:
    backoff = RestartBackoff(initial_s=1.0, max_s=60.0, healthy_after_s=float("inf"), clock=Clock())
    assert [backoff.next_delay() for _ in range(3)] == [1.0, 2.0, 4.0]
    backoff.healthy()
    assert backoff.next_delay() == 1.0


def test_the_job_table_is_what_the_config_and_the_metrics_name() -> None:
    """One table of jobs (evolvd.jobs; the metrics and the scheduler import it): the config has a
    schedule for each, with the table's default."""
    from evolvd.config import JobSchedule, SchedulerConfig
    from evolvd.jobs import JOB_SPECS, JOBS

    defaults = SchedulerConfig()
    schedules = {
        name for name, field in SchedulerConfig.model_fields.items() if field.annotation is JobSchedule
    }
    assert schedules == set(JOBS)
    for spec in JOB_SPECS:
        schedule = getattr(defaults, spec.name)
        assert (schedule.interval_s, schedule.cron) == (spec.interval_s, spec.cron)
