"""`postyard demo` (DESIGN §4, §8): the routing example on real local SMTP servers, as a user
runs it, and the structured steps it is printed from."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from postyard.demo import Step, run_demo

THREE_SERVERS = {
    "segment_triggered": "smtp-main",
    "event_triggered": "smtp-events",
    "newsletter": "smtp-news",
    "triggered_broadcast": "smtp-main",
}
NEWS_SET_TO_NONE = {**THREE_SERVERS, "newsletter": "smtp-main"}
FIVE_SERVERS = {
    "segment_triggered": "smtp-segments",
    "event_triggered": "smtp-events",
    "newsletter": "smtp-news",
    "triggered_broadcast": "smtp-broadcasts",
}


@dataclass
class PrintedTable:
    """One table of the demo's output: campaign type -> (routed to, why, received by)."""

    rows: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


def demo_command() -> list[str]:
    script = Path(sys.executable).parent / "postyard"
    if script.exists():
        return [str(script), "demo"]
    return [sys.executable, "-c", "from postyard.cli import app; app()", "demo"]


def parse_tables(output: str) -> list[PrintedTable]:
    """Rows are the lines drawn with '│'; each table ends with its 'Messages per server' line."""
    tables = [PrintedTable()]
    for line in output.splitlines():
        if line.startswith("│"):
            cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
            assert len(cells) == 4, line
            campaign_type, routed_to, why, received_by = cells
            tables[-1].rows[campaign_type] = (routed_to, why, received_by)
        elif line.startswith("Messages per server:"):
            for pair in line.removeprefix("Messages per server:").split(","):
                name, count = pair.split(":")
                tables[-1].counts[name.strip()] = int(count)
            tables.append(PrintedTable())
    return tables[:-1]


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    environment = {**os.environ, "COLUMNS": "200"}
    environment = {k: v for k, v in environment.items() if not k.startswith("POSTYARD_")}
    completed = subprocess.run(
        demo_command(),
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path_factory.mktemp("demo"),
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


def received(table: PrintedTable) -> dict[str, str]:
    return {campaign_type: row[2] for campaign_type, row in table.rows.items()}


def routed(table: PrintedTable) -> dict[str, str]:
    return {campaign_type: row[0] for campaign_type, row in table.rows.items()}


def test_demo_command_prints_three_tables(demo_output: str) -> None:
    assert len(parse_tables(demo_output)) == 3


def test_demo_three_servers_each_type_is_received_by_the_server_it_is_routed_to(
    demo_output: str,
) -> None:
    first = parse_tables(demo_output)[0]

    assert received(first) == THREE_SERVERS
    assert routed(first) == THREE_SERVERS
    assert {t: row[1] for t, row in first.rows.items()} == {
        "segment_triggered": "fallback",
        "event_triggered": "specific",
        "newsletter": "specific",
        "triggered_broadcast": "fallback",
    }
    assert first.counts == {"smtp-main": 2, "smtp-events": 1, "smtp-news": 1}


def test_demo_newsletters_fall_back_to_the_main_server_after_news_is_set_to_none(
    demo_output: str,
) -> None:
    second = parse_tables(demo_output)[1]

    assert received(second) == NEWS_SET_TO_NONE
    assert routed(second) == NEWS_SET_TO_NONE
    assert second.rows["newsletter"][1] == "fallback"
    assert second.counts == {"smtp-main": 3, "smtp-events": 1, "smtp-news": 0}
    assert "Sends nothing: smtp-news (set to None)" in demo_output


def test_demo_five_servers_leave_the_all_emails_server_idle_and_refuse_changing_it(
    demo_output: str,
) -> None:
    third = parse_tables(demo_output)[2]

    assert received(third) == FIVE_SERVERS
    assert routed(third) == FIVE_SERVERS
    assert {row[1] for row in third.rows.values()} == {"specific"}
    assert third.counts["smtp-main"] == 0
    assert all(third.counts[name] == 1 for name in FIVE_SERVERS.values())
    assert "Sends nothing: smtp-main" in demo_output
    assert "fallback_required" in demo_output
    assert "role_taken" in demo_output


def test_run_demo_steps_agree_between_routing_and_what_each_server_received(
    tmp_path: Path,
) -> None:
    steps: list[Step] = asyncio.run(run_demo(tmp_path))

    assert len(steps) == 3
    for step in steps:
        assert len(step.rows) == 4, step.title
        for row in step.rows:
            assert row.received_by == [row.expected_server], (step.title, row)
    expectations = [THREE_SERVERS, NEWS_SET_TO_NONE, FIVE_SERVERS]
    for step, expected in zip(steps, expectations, strict=True):
        assert {row.campaign_type.value: row.expected_server for row in step.rows} == expected
    assert steps[1].idle == [("smtp-news", "set to None")]
    assert steps[2].counts["smtp-main"] == 0
    assert [idle[0] for idle in steps[2].idle] == ["smtp-main"]
    assert [refusal.code for refusal in steps[2].refusals] == ["fallback_required", "role_taken"]
    assert all(refusal.status == 409 for refusal in steps[2].refusals)
    assert (tmp_path / "demo.db").exists()
