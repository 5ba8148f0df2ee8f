"""Score rollback diagnoses on the hand-written cases in ``cases/`` (see README.md).

    .venv/bin/python -m tests.llm_eval.run_eval                # the configured model
    .venv/bin/python -m tests.llm_eval.run_eval --model M --json
    .venv/bin/python -m tests.llm_eval.run_eval --template     # the fallback text, no key

For each case a throwaway redis-server holds the release, its audit trail and the previous
release as the bot writes them; the evidence pack is built by
``bot.writing.evidence.build_evidence``, the prompt rendered by ``render_pair("diagnosis", ...)``,
the model called through ``bot.writing.llm.LLM`` and the message put together as
``Narrator.diagnose`` does (our facts sentence, the model's text and its label). Then the text is
scored (``tests.llm_eval.scoring``).

Exit status: 0 done; 1 the mean score is under ``--fail-under``; 2 cannot run (no API key for a
model run, no redis-server, a broken case file).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bot.config import Settings
from bot.redact import redact, redact_obj
from bot.store.store import Store
from bot.writing.evidence import (
    NO_LLM_LABEL,
    Evidence,
    build_evidence,
    facts_sentence,
    llm_down_label,
    llm_label,
    template_diagnosis,
)
from bot.writing.llm import LLM, LLMError
from bot.writing.prompts import render_pair
from tests.llm_eval.cases import CASES_DIR, Case, CaseError, load_cases, record_case
from tests.llm_eval.scoring import CRITERIA, Expectations, KnownNumbers, Score, score
from tests.support.procs import redis_server

EXIT_FAIL_UNDER = 1
EXIT_CANNOT_RUN = 2


class CannotRunError(Exception):
    """Something the run needs is missing; the message says what to do."""


# --- one case -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    case: Case
    text: str  # the diagnosis as the team would read it
    written: str  # the part after our facts sentence, label left out
    prompt: str  # the user prompt (the evidence pack) the writer was given
    score: Score | None  # None when the model gave no answer
    error: str = ""

    @property
    def total(self) -> float:
        return self.score.total if self.score is not None else 0.0


def compose(evidence: Evidence, written: str, label: str) -> str:
    """The diagnosis message as ``Narrator.diagnose`` puts it together: our facts sentence,
    the written text and its label, or the template diagnosis when nothing was written."""
    facts = facts_sentence(evidence)
    if written:
        return f"{facts}\n{written}\n{label}".strip()
    return template_diagnosis(evidence, label=label)


def written_part(text: str, facts: str, label: str) -> str:
    """What follows our facts sentence in ``text``, without the label line."""
    body = text.removeprefix(facts)
    return "\n".join(line for line in body.splitlines() if line.strip() != label).strip()


def expectations(case: Case) -> Expectations:
    e = case.expect
    return Expectations(
        must_state=e.must_state,
        cause_keywords=e.cause_keywords,
        must_not=e.must_not,
        cause_must_not=e.cause_must_not,
        must_admit_uncertainty=e.must_admit_uncertainty,
        uncertainty_phrases=e.uncertainty_phrases,
    )


async def run_case(store: Store, case: Case, llm: LLM | None) -> Outcome:
    """Record ``case`` in an empty store, build its evidence and prompt, get the diagnosis
    (from ``llm``, or the template when it is None) and score it."""
    await store.redis.flushdb()
    release = await record_case(store, case)
    evidence = await build_evidence(store, release, units=case.units)
    system, user = render_pair("diagnosis", evidence=redact_obj(evidence.to_dict()))

    written, label, error = "", NO_LLM_LABEL, ""
    if llm is not None:
        try:
            written = (await llm.complete(system, user)).strip()
            label = llm_label(llm.model)
        except LLMError as exc:
            label, error = llm_down_label(exc.reason), str(exc)
    text = compose(evidence, written, label)
    part = written_part(text, facts_sentence(evidence), label)
    if error:
        return Outcome(case, text, part, user, None, error)
    # The numbers a writer may use are those of the prompt it was shown (as sent: redacted).
    known = KnownNumbers.of(redact(user))
    return Outcome(case, text, part, user, score(text, part, known, expectations(case)))


async def run_all(redis_url: str, cases: Sequence[Case], llm: LLM | None) -> list[Outcome]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        store = Store(client)
        return [await run_case(store, case, llm) for case in cases]
    finally:
        await client.aclose()
        if llm is not None:
            await llm.close()


# --- summary and output ---------------------------------------------------------------------------


def summarize(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Mean score over all cases (a case without an answer scores 0) and, per criterion, how
    many of the scored cases it applied to fully passed."""
    scored = [o.score for o in outcomes if o.score is not None]
    criteria: dict[str, dict[str, Any]] = {}
    for name in CRITERIA:
        values = [v for s in scored if (v := s.criteria[name]) is not None]
        passed = sum(v == 1.0 for v in values)
        criteria[name] = {
            "passed": passed,
            "applicable": len(values),
            "rate": round(passed / len(values), 3) if values else None,
        }
    mean = sum(o.total for o in outcomes) / len(outcomes) if outcomes else 0.0
    return {
        "cases": len(outcomes),
        "errors": sum(o.score is None for o in outcomes),
        "mean_score": round(mean, 3),
        "criteria": criteria,
    }


def outcome_json(o: Outcome) -> dict[str, Any]:
    s = o.score
    return {
        "id": o.case.id,
        "title": o.case.title,
        "score": round(o.total, 3),
        "error": o.error or None,
        "criteria": None if s is None else s.criteria,
        "details": None
        if s is None
        else {
            "facts_found": list(s.facts_found),
            "facts_missing": list(s.facts_missing),
            "cause_group": None if s.cause_group is None else list(s.cause_group),
            "invented": list(s.invented),
            "unknown_numbers": list(s.unknown_numbers),
            "uncertainty_admitted": s.uncertainty,
            "format_ok": s.format_ok,
        },
        "text": o.text,
        "written": o.written,
        "prompt": o.prompt,
    }


def _mark(value: float | None, yes: str = "ok", no: str = "NO") -> str:
    if value is None:
        return "-"
    return yes if value == 1.0 else no


def _row(o: Outcome) -> list[str]:
    s = o.score
    if s is None:
        return [o.case.id, "error", "", "", "", "", "", f"{o.total:.2f}"]
    c = s.criteria
    facts = f"{len(s.facts_found)}/{len(s.facts_found) + len(s.facts_missing)}"
    return [
        o.case.id,
        facts,
        _mark(c["cause"], "yes"),
        _mark(c["no_invented"], "ok", f"NO({len(s.invented)})"),
        _mark(c["numbers"], "ok", f"NO({len(s.unknown_numbers)})"),
        _mark(c["uncertainty"], "yes"),
        _mark(c["format"]),
        f"{o.total:.2f}",
    ]


def _details(o: Outcome) -> list[str]:
    s = o.score
    if s is None:
        return [f"model gave no answer: {o.error}"]
    out: list[str] = []
    if s.facts_missing:
        out.append("facts missing: " + ", ".join(repr(p) for p in s.facts_missing))
    if s.cause_applies and s.cause_group is None:
        wanted = " | ".join(" + ".join(g) for g in o.case.expect.cause_keywords)
        out.append(f"no cause named (any of: {wanted})")
    if s.invented:
        out.append("invented: " + ", ".join(repr(p) for p in s.invented))
    if s.unknown_numbers:
        out.append("numbers not in the evidence: " + ", ".join(s.unknown_numbers))
    if s.uncertainty is False:
        out.append("does not admit that the evidence shows no cause")
    if not s.format_ok:
        out.append('lacks "Likely cause:" and/or "Suggested next step:"')
    return out


def report(outcomes: Sequence[Outcome], header: str, *, show: bool, prompts: bool) -> str:
    head = ["case", "facts", "cause", "invented", "numbers", "uncertain", "format", "score"]
    rows = [_row(o) for o in outcomes]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        # Left-aligned columns, the score right-aligned.
        *left, last = (c.ljust(w) for c, w in zip(cells, widths, strict=True))
        return "  ".join([*left, last.strip().rjust(widths[-1])])

    out = [header, "", line(head), line(["-" * w for w in widths])]
    for o, row in zip(outcomes, rows, strict=True):
        out.append(line(row))
        out += [f"    {d}" for d in _details(o)]
        if prompts:
            out += ["", *(f"    > {t}" for t in o.prompt.splitlines()), ""]
        if show:
            out += ["", *(f"    | {t}" for t in o.text.splitlines()), ""]

    summary = summarize(outcomes)
    out += [
        "",
        f"cases: {summary['cases']}, without an answer: {summary['errors']}",
        f"mean score: {summary['mean_score']:.2f}",
        "",
        "criterion     passed   rate",
    ]
    for name, c in summary["criteria"].items():
        rate = "-" if c["rate"] is None else f"{c['rate'] * 100:.0f}%"
        out.append(f"{name:<12}  {c['passed']:>2}/{c['applicable']:<2}  {rate:>5}")
    return "\n".join(out)


# --- command line ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.llm_eval.run_eval",
        description="Score rollback diagnoses on the evaluation cases.",
    )
    parser.add_argument("--model", help="model name (default: SHIPWATCH_LLM_MODEL or the bot's)")
    parser.add_argument("--base-url", help="OpenAI-compatible endpoint (default: OPENAI_BASE_URL)")
    parser.add_argument("--timeout", type=float, help="seconds per call (default: the bot's)")
    parser.add_argument(
        "--cases",
        type=Path,
        default=CASES_DIR,
        help=f"folder of *.json cases (default: {CASES_DIR})",
    )
    parser.add_argument(
        "--case", action="append", dest="only", metavar="ID", help="run only this case (repeatable)"
    )
    parser.add_argument(
        "--template",
        action="store_true",
        help="score the template fallback instead of a model (no key needed)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--show", action="store_true", help="print each diagnosis under its row")
    parser.add_argument(
        "--show-prompt",
        action="store_true",
        help="print the evidence pack (user prompt) of each case under its row",
    )
    parser.add_argument(
        "--fail-under", type=float, metavar="SCORE", help="exit 1 when the mean score is lower"
    )
    return parser.parse_args(argv)


def make_llm(args: argparse.Namespace, settings: Settings) -> LLM:
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
    if not key:
        raise CannotRunError(
            "OPENAI_API_KEY is not set: a model run needs it (a self-hosted endpoint that takes "
            "no key accepts any placeholder, e.g. OPENAI_API_KEY=none). "
            "--template scores the fallback text without a model."
        )
    return LLM(
        api_key=key,
        base_url=args.base_url or settings.openai_base_url,
        model=args.model or settings.llm_model,
        timeout=args.timeout or settings.llm_timeout,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    try:
        cases = load_cases(args.cases, set(args.only) if args.only else None)
        settings = Settings()
        llm = None if args.template else make_llm(args, settings)
        if shutil.which("redis-server") is None:
            raise CannotRunError(
                "redis-server is not installed (apt-get install redis-server): the cases are "
                "recorded in a throwaway one, as the bot records releases"
            )
    except (CaseError, CannotRunError) as exc:
        print(f"run_eval: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN

    with (
        tempfile.TemporaryDirectory(prefix="shipwatch-eval-") as tmp,
        redis_server(Path(tmp)) as url,
    ):
        outcomes = asyncio.run(run_all(url, cases, llm))

    if llm is None:
        mode, header = "template", "template fallback (no model)"
    else:
        endpoint = args.base_url or settings.openai_base_url or "the OpenAI API"
        mode, header = "model", f"model {llm.model} at {endpoint}"
    summary = summarize(outcomes)
    if args.json:
        print(
            json.dumps(
                {
                    "mode": mode,
                    "model": llm.model if llm is not None else None,
                    "base_url": (args.base_url or settings.openai_base_url)
                    if llm is not None
                    else None,
                    "summary": summary,
                    "cases": [outcome_json(o) for o in outcomes],
                },
                indent=2,
                ensure_ascii=False,
            )
        )
    else:
        print(report(outcomes, header, show=args.show, prompts=args.show_prompt))
    if args.fail_under is not None and summary["mean_score"] < args.fail_under:
        return EXIT_FAIL_UNDER
    return 0


if __name__ == "__main__":
    sys.exit(main())
