"""The loop's leadership on a shared PostgreSQL buffer (issue 22): of several loop members exactly one
leads; when its session dies a standby leads within its check interval, in a new term; a decision
made under a stale term is refused and leaves nothing behind. Real processes: two `evolvd run --role
loop` members, the leader kill -9'd, the operator's pause kept in the shared job store."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
from daemon_process import DaemonProcess
from helpers import wait_for

from evolvd.admin_client import admin_call
from evolvd.buffer.leadership import Campaign, Fence, StaleLeaderError, current_term
from evolvd.buffer.postgres_buffer import PostgresBuffer
from evolvd.policies.audit import Decision
from evolvd.policies.engine import PolicyEngine
from evolvd.policies.store import PolicyStore

CHECK_S = 0.2


class Member:
    """One campaign and what it was told."""

    def __init__(self, url: str, name: str) -> None:
        self.fence = Fence(shared=True)
        self.terms: list[int] = []
        self.deposed: list[str] = []
        self.campaign = Campaign(url, name, self.fence, self.terms.append, self.deposed.append, CHECK_S)


def admin(member: DaemonProcess, path: str) -> httpx.Response:
    return admin_call(member.url, "POST", path, token=member.token, timeout_s=30)


def decision(subject: str) -> Decision:
    return Decision("promotion", "h", "adapter", subject, "promote", (), {})


def promotions(url: str) -> list[tuple[str, int | None]]:
    with psycopg.connect(url) as con:
        rows = con.execute(
            b"SELECT subject_id, fencing_token FROM policy_decisions WHERE policy = 'promotion'"
            b" ORDER BY decision_id"
        ).fetchall()
    return [(str(s), t) for s, t in rows]


def test_one_member_leads_a_standby_takes_over_and_a_stale_term_cannot_decide(postgres_url: str) -> None:
    buffer = PostgresBuffer(postgres_url)  # the schema, and the buffer the decisions are written to
    members = [Member(postgres_url, f"m{i}") for i in range(3)]
    try:
        for member in members:
            member.campaign.start()
        wait_for(lambda: any(m.campaign.leading for m in members), "a leader", 10, 0.05)
        time.sleep(5 * CHECK_S)  # every member has campaigned several times since
        leaders = [m for m in members if m.campaign.leading]
        assert len(leaders) == 1
        first = leaders[0]
        assert first.terms == [1] and current_term(buffer.cursor()) == (1, first.campaign.holder)

        engine = PolicyEngine(buffer, PolicyStore(None), None, lambda texts: np.zeros((len(texts), 4)))
        engine.record_decisions([decision("a-v1")], first.fence)
        standby = next(m for m in members if m is not first)
        with pytest.raises(StaleLeaderError, match="does not lead"):
            engine.record_decisions([decision("a-v2")], standby.fence)
        # The standby's loop jobs (screen, drift, gate) are fenced the same way.
        standby_engine = PolicyEngine(
            buffer, PolicyStore(None), None, lambda texts: np.zeros((len(texts), 4)), fence=standby.fence
        )
        with pytest.raises(StaleLeaderError):
            standby_engine.record_loop_decisions([decision("a-v2")])

        # The leader's session dies (a kill, a lost host): the lock goes with it, another member leads.
        stale_token = first.fence.token
        first.campaign.stop()
        wait_for(lambda: any(m.campaign.leading for m in members if m is not first), "a new leader", 10, 0.05)
        second = next(m for m in members if m.campaign.leading)
        assert second.terms == [2] and first.deposed == ["this member is stopping"]

        # A decision still carrying the old term's token (a leader cut off mid-job) is refused.
        assert stale_token == 1
        first.fence.begin_term(stale_token)
        with pytest.raises(StaleLeaderError, match="fencing token 1 is stale"):
            engine.record_decisions([decision("a-v3")], first.fence)
        engine.record_decisions([decision("a-v4")], second.fence)
        assert promotions(postgres_url) == [("a-v1", 1), ("a-v4", 2)]
    finally:
        for member in members:
            member.campaign.stop()
        buffer.close()


def test_a_new_term_waits_for_a_decision_being_committed(postgres_url: str) -> None:
    """The fence's row lock orders a decision and the next election: the new term begins only after
    the old term's decision committed, so a decision is never made 'during' a later term."""
    buffer = PostgresBuffer(postgres_url)
    leader = Member(postgres_url, "old")
    try:
        leader.campaign.start()
        wait_for(lambda: leader.campaign.leading, "a leader", 10, 0.05)
        con = buffer.cursor()
        con.begin()
        assert leader.fence.check(con) == 1  # a decision's transaction, still open
        elected = threading.Event()

        def next_term() -> None:
            from evolvd.buffer.leadership import start_term

            start_term(PostgresBuffer.cursor(buffer), "new")  # another thread: its own connection
            elected.set()

        thread = threading.Thread(target=next_term)
        thread.start()
        assert not elected.wait(1.0), "a new term began while a decision of the old one was open"
        con.commit()
        assert elected.wait(10)
        thread.join()
        assert current_term(buffer.cursor()) == (2, "new")
    finally:
        leader.campaign.stop()
        buffer.close()


@pytest.mark.kafka
def test_two_loop_members_one_leads_and_the_standby_takes_over_a_kill_9(
    broker: Any, postgres_url: str, tmp_path: Path
) -> None:
    env = {
        "EVOLVD_BUFFER__BACKEND": "postgres",
        "EVOLVD_BUFFER__POSTGRES_URL": postgres_url,
        "EVOLVD_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "EVOLVD_SERVING__ENABLED": "false",
        "EVOLVD_SCHEDULER__LEADER_CHECK_S": "0.5",
    }
    members = [
        DaemonProcess(tmp_path / f"member-{n}", env, args=("--role", "loop")).start(timeout_s=120)
        for n in range(2)
    ]
    try:

        def roles() -> dict[str, DaemonProcess]:
            return {m.status()["loop"]["leadership"]["role"]: m for m in members}

        wait_for(lambda: "leader" in roles(), "a leader", 30, 0.2)
        by_role = roles()
        assert set(by_role) == {"leader", "standby"}
        leader, standby = by_role["leader"], by_role["standby"]
        wait_for(lambda: leader.status()["loop"]["jobs"], "the leader's scheduler to start", 30, 0.1)
        lead = leader.status()["loop"]["leadership"]
        assert standby.status()["loop"]["jobs"] == []  # a standby runs no jobs
        # Without serving a loop member runs the policies and retention jobs.
        assert admin(leader, "/jobs/policies/pause").status_code == 200
        refused = admin(standby, "/jobs/policies/pause")
        assert refused.status_code == 409 and f"the loop's leader is {lead['leader']}" in refused.text

        leader.kill()  # SIGKILL to the leader this test started
        took_over = time.monotonic()

        def leading_with_jobs() -> dict[str, Any] | None:
            # Elected first, then its term's scheduler starts: both, or not yet.
            loop: dict[str, Any] = standby.status()["loop"]
            return loop if loop["leadership"]["role"] == "leader" and loop["jobs"] else None

        now = wait_for(leading_with_jobs, "the standby to lead and run the jobs", 30, 0.2)
        assert time.monotonic() - took_over < 15
        assert now["leadership"]["token"] == lead["token"] + 1
        jobs = {j["job"]: j for j in now["jobs"]}
        assert jobs["policies"]["paused"] and not jobs["retention"]["paused"]  # the shared job store
    finally:
        for member in members:
            member.stop(timeout_s=60)
