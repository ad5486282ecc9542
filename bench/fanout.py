"""Newsletter fan-out: how fast a send turns N people into N personalised outbox rows, and
whether memory stays flat as N grows.

Run from the repository root::

    .venv/bin/python bench/fanout.py [--people 100000] [--database-url URL]
        [--batch-size 1000] [--size 2000]

What it does:

* Creates a fresh database (SQLite in a temporary directory, or a throw-away database on the
  PostgreSQL server named by ``--database-url``, as ``bench/delivery.py`` does) and a workspace.
* Inserts N people in bulk (a Core insert of the rows, not the identify path: that is what
  ``bench/ingest.py`` measures); timed separately as set-up.
* Creates a newsletter to ``{"all": true}`` through the service layer
  (``campaigns.create_campaign``), with a Liquid template of about ``--size`` bytes that uses
  ``customer.first_name``, ``customer.last_name``, ``customer.plan`` (in an ``if``),
  ``customer.city``, a ``for`` loop over the person's ``interests`` and ``unsubscribe_url``.
* Times ``campaigns.send_newsletter`` (committed) and then ``Jobs.run_due()`` until the
  campaign is ``sent``: people per second from ``send`` to the last outbox row queued.
  A thread samples this process's resident memory every 50 ms during the fan-out, so the
  record holds RSS before, the highest sample during and RSS after, besides the process's
  high-water mark (``ru_maxrss``).
* Checks that the outbox holds exactly N queued rows of this campaign, appends one JSON line
  to ``bench/results/fanout.jsonl`` and prints a summary.

Exit status: 0 when all N rows were queued, 1 otherwise, 2 when the database is missing.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy import func, insert, select

from common import (
    RESULTS_DIR,
    bench_database,
    cpu_seconds,
    current_rss_mb,
    peak_rss_mb,
    provenance,
    run_main,
    source_digest,
    table,
)
from delivery import FIRST_NAMES, LAST_NAMES, SENTENCES
from postyard.clock import utcnow
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.db.migrate import upgrade
from postyard.db.models import ApiKey, Campaign, Delivery, DeliveryContent, Person
from postyard.routing import CampaignType, Plan
from postyard.secretbox import secret_box
from postyard.services import campaigns, fanout
from postyard.services.jobs import Jobs
from postyard.services.runtime import Runtime
from postyard.services.workspaces import Caller, create_workspace

DEFAULT_RESULTS = RESULTS_DIR / "fanout.jsonl"
INSERT_CHUNK = 5000
PLANS = ("free", "pro", "team")
CITIES = ("Lyon", "Leeds", "Leipzig", "Lisbon", "Ljubljana", "Lund", "Lausanne", "Lucca")
INTERESTS = ("exports", "reports", "mobile", "teams", "billing", "api", "themes")


def message_template(size: int, seed: int = 2024) -> dict[str, str]:
    """A newsletter of about `size` bytes of text once rendered: ordinary prose around the
    personalised parts, which are what Liquid has to evaluate for each person."""
    rng = random.Random(seed)
    head = (
        "Hi {{ customer.first_name }} {{ customer.last_name }},\n\n"
        "{% if customer.plan == 'pro' %}Thank you for being on the Pro plan since "
        "{{ customer.since }}.{% else %}You are on the {{ customer.plan | capitalize }} plan; "
        "Pro adds scheduled reports and team roles.{% endif %}\n\n"
        "Events near {{ customer.city | default: 'you' }} this month are listed below.\n\n"
    )
    tail = (
        "\n\nBecause you follow {% for topic in customer.interests %}{{ topic }}"
        "{% unless forloop.last %}, {% endunless %}{% endfor %}, we picked these for you.\n\n"
        "Unsubscribe: {{ unsubscribe_url }}\n"
        "Acme Ltd, 1 Example Street, Exampletown\n"
    )
    paragraphs: list[str] = []
    length = 0
    while length < max(size - 330, 0):  # about 330 bytes of head and tail once rendered
        paragraph = textwrap.fill(" ".join(rng.sample(SENTENCES, 4)), width=72)
        paragraphs.append(paragraph)
        length += len(paragraph) + 2
    prose = "\n\n".join(paragraphs)[: max(size - 330, 0)].rstrip()
    return {
        "from": "Acme News <news@acme.example>",
        "subject": "{{ customer.first_name }}, what is new at Acme this month",
        "text": head + prose + tail,
    }


def person_rows(workspace_id: int, count: int, seed: int = 2024) -> Any:
    """The rows of `count` people, in chunks, each with a few attributes the template uses."""
    rng = random.Random(seed)
    now = utcnow()
    chunk: list[dict[str, Any]] = []
    for index in range(count):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        chunk.append(
            {
                "workspace_id": workspace_id,
                "person_id": f"user-{index}",
                "email": f"{first.lower()}.{last.lower()}.{index}@customers.example",
                "attributes": {
                    "first_name": first,
                    "last_name": last,
                    "plan": rng.choice(PLANS),
                    "city": rng.choice(CITIES),
                    "since": f"20{rng.randint(10, 25)}",
                    "interests": rng.sample(INTERESTS, 3),
                },
                "unsubscribed": False,
                "created_at": now,
                "updated_at": now,
            }
        )
        if len(chunk) == INSERT_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class RssSampler:
    """Samples this process's current resident memory in a thread, keeping the highest."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.highest = current_rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.highest = max(self.highest, current_rss_mb())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.highest = max(self.highest, current_rss_mb())


def run(args: argparse.Namespace) -> dict[str, Any]:
    digest = source_digest()
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="postyard-bench-")))
        db = stack.enter_context(bench_database(args.database_url, workdir))
        settings = Settings(
            database_url=db.url,
            secret_key=Fernet.generate_key().decode(),
            secret_key_file=workdir / "postyard.key",
        )
        upgrade(db.url)
        database = Database(db.url)
        stack.callback(database.dispose)
        runtime = Runtime(settings, secret_box(settings))

        started = time.perf_counter()
        with database.session() as session:
            created = create_workspace(session, "Postyard fan-out bench", Plan.STANDARD)
            key_id = session.scalar(
                select(ApiKey.id).where(ApiKey.workspace_id == created.workspace_id)
            )
        caller = Caller(created.workspace_id, Plan.STANDARD, key_id or 0)
        for chunk in person_rows(caller.workspace_id, args.people):
            with database.session() as session:
                session.execute(insert(Person), chunk)
        setup_seconds = time.perf_counter() - started

        with database.session() as session:
            campaign = campaigns.create_campaign(
                session,
                runtime,
                caller,
                campaigns.CampaignSpec(
                    name="November newsletter",
                    type=CampaignType.NEWSLETTER,
                    message=message_template(args.size),
                    audience={"all": True},
                ),
            )
            campaign_id = campaign.id

        jobs = Jobs(database, runtime, batch_size=args.batch_size)
        rss_before = current_rss_mb()
        peak_before = peak_rss_mb()
        load_before = os.getloadavg()[0]
        cpu_before = cpu_seconds()
        with RssSampler() as sampler:
            started = time.perf_counter()
            with database.session() as session:
                campaigns.send_newsletter(session, runtime, caller, campaign_id, None)
            rounds = 0
            while True:
                rounds += 1
                jobs.run_due()
                with database.session() as session:
                    state = session.scalar(select(Campaign.state).where(Campaign.id == campaign_id))
                if state == campaigns.State.SENT or time.perf_counter() - started > args.timeout:
                    break
            fanout_seconds = time.perf_counter() - started
        fanout_cpu = cpu_seconds() - cpu_before
        rss_after = current_rss_mb()

        with database.session() as session:
            statuses = dict(
                session.execute(
                    select(Delivery.status, func.count())
                    .where(Delivery.campaign_id == campaign_id)
                    .group_by(Delivery.status)
                ).all()
            )
            sample = session.scalars(
                select(DeliveryContent.text_body)
                .join(Delivery, Delivery.id == DeliveryContent.delivery_id)
                .where(Delivery.campaign_id == campaign_id)
                .limit(50)
            ).all()
        body_bytes = round(sum(len((body or "").encode()) for body in sample) / max(len(sample), 1))

    problems = []
    if state != campaigns.State.SENT:
        problems.append(f"campaign still {state} after {args.timeout:g} s")
    if statuses.get("queued", 0) != args.people:
        problems.append(f"queued {statuses.get('queued', 0)} of {args.people}")
    return {
        **provenance("fanout", digest, load_before),
        "database": {"backend": db.backend, "version": db.version},
        "people": args.people,
        "batch_size": args.batch_size,
        "template_size": args.size,
        "body_bytes": body_bytes,
        "setup_seconds": round(setup_seconds, 3),
        "setup_people_per_s": round(args.people / setup_seconds, 1),
        "fanout_seconds": round(fanout_seconds, 3),
        "people_per_s": round(args.people / fanout_seconds, 1),
        "fanout_cpu_seconds": round(fanout_cpu, 3),
        "cpu_us_per_person": round(fanout_cpu / args.people * 1e6, 1),
        "run_due_rounds": rounds,
        "rss_before_mb": round(rss_before, 1),
        "rss_highest_during_mb": round(sampler.highest, 1),
        "rss_after_mb": round(rss_after, 1),
        "rss_growth_mb": round(sampler.highest - rss_before, 1),
        "peak_rss_before_send_mb": round(peak_before, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "statuses": statuses,
        "problems": problems,
        "ok": not problems,
        "note": args.note,
    }


def summary(r: dict[str, Any]) -> str:
    return table(
        "Postyard newsletter fan-out benchmark",
        [
            ("database", f"{r['database']['backend']} {r['database']['version']}"),
            ("people", f"{r['people']:,} (Jobs batch size {r['batch_size']:,})"),
            ("message", f"~{r['body_bytes']:,} B of text rendered per person"),
            ("set-up (bulk insert)", f"{r['setup_seconds']:.1f} s"),
            ("send to all queued", f"{r['fanout_seconds']:.1f} s"),
            ("fan-out", f"{r['people_per_s']:,.0f} people/s"),
            ("CPU per person", f"{r['cpu_us_per_person']:,.0f} us"),
            (
                "RSS before / max / after",
                f"{r['rss_before_mb']:.0f} / {r['rss_highest_during_mb']:.0f} / "
                f"{r['rss_after_mb']:.0f} MB (growth {r['rss_growth_mb']:+.0f} MB)",
            ),
            ("peak RSS (ru_maxrss)", f"{r['peak_rss_mb']:.0f} MB"),
            (
                "load before",
                f"{r['machine']['load_before']:.2f} on {r['machine']['cpu_count']} CPUs",
            ),
            ("statuses", ", ".join(f"{k} {v:,}" for k, v in sorted(r["statuses"].items()))),
            ("verdict", "OK" if r["ok"] else "FAILED: " + "; ".join(r["problems"])),
        ],
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=100_000, help="audience size (100000)")
    parser.add_argument(
        "--database-url",
        help="SQLite URL of a new file, or a PostgreSQL server URL on which a throw-away "
        "database is created and dropped (default: SQLite in a temporary directory)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=fanout.BATCH_SIZE,
        help="people per Jobs batch (Postyard's default: %(default)s)",
    )
    parser.add_argument("--size", type=int, default=2000, help="text bytes per message (2000)")
    parser.add_argument("--timeout", type=float, default=3600, help="give up after (s)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="JSONL to append")
    parser.add_argument("--no-record", action="store_true", help="do not append to the results")
    parser.add_argument("--note", help="free text stored with the result")
    args = parser.parse_args(argv)
    if min(args.people, args.batch_size, args.size) <= 0:
        parser.error("--people, --batch-size and --size must be > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(
        "fanout.py",
        lambda: [run(args)],
        lambda record: print(summary(record)),
        args.results,
        not args.no_record,
    )


if __name__ == "__main__":
    sys.exit(main())
