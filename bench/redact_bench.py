"""bot.redact weighed against detect-secrets (its default plugins: keywords, entropy, and the
token shapes it knows) on the table of tests/test_redact.py: secrets that must go, ordinary
release text that must stay.

Run from the project root::

    .venv/bin/python -m bench.redact_bench

detect-secrets scans a file of the table's lines, one row a line, as it would scan a repository
(its filters and entropy limits apply); a secret counts as caught when it reports anything on
its line. bot.redact catches a secret when the secret is gone from its output, and flags an
ordinary row when it changes it. The bot's own configured secrets (remembered as literal text)
are left out: only shapes are compared. Prints a table, then one JSON object on the last line.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from detect_secrets.core.secrets_collection import SecretsCollection
from detect_secrets.settings import default_settings

from bot.redact import redact
from tests.test_redact import ORDINARY, SECRETS

REPEATS = 7


def rows() -> tuple[list[tuple[str, str, str]], list[str]]:
    """(id, line, secret) per secret row, and the ordinary lines; one line each."""
    secrets = []
    for param in SECRETS:
        text, secret = param.values
        secrets.append((str(param.id), str(text).replace("\n", " "), str(secret)))
    ordinary = [text.replace("\n", " ") for text in ORDINARY if text.strip()]
    return secrets, ordinary


def detect_secrets_findings(lines: list[str]) -> tuple[dict[int, list[str]], float]:
    """Line number (1-based) -> the secret values found there; and seconds per line."""
    with tempfile.TemporaryDirectory(prefix="redact-bench-") as tmp:
        path = Path(tmp) / "table.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        timings = []
        found: dict[int, list[str]] = {}
        for _ in range(REPEATS):
            collection = SecretsCollection()
            started = time.perf_counter()
            with default_settings():
                collection.scan_file(str(path))
            timings.append(time.perf_counter() - started)
            found = {}
            for _file, secret in collection:
                found.setdefault(secret.line_number, []).append(secret.secret_value or "")
    return found, statistics.median(timings) / len(lines)


def ours(lines: list[str]) -> tuple[list[str], float]:
    timings = []
    out: list[str] = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        out = [redact(line) for line in lines]
        timings.append(time.perf_counter() - started)
    return out, statistics.median(timings) / len(lines)


def main() -> None:
    secrets, ordinary = rows()
    lines = [line for _, line, _ in secrets] + ordinary
    found, theirs_s = detect_secrets_findings(lines)
    redacted, ours_s = ours(lines)

    missed_ours = [rid for n, (rid, _, s) in enumerate(secrets) if s in redacted[n]]
    # Generous to detect-secrets: any finding on the line counts (some of its detectors report
    # only a token's prefix as the value, so what exactly to remove is not always known).
    missed_theirs = [rid for n, (rid, _, _) in enumerate(secrets) if not found.get(n + 1)]
    first = len(secrets)
    flagged_ours = [t for n, t in enumerate(ordinary) if redacted[first + n] != t]
    flagged_theirs = [t for n, t in enumerate(ordinary) if found.get(first + n + 1)]

    table = [
        ("", "bot.redact", "detect-secrets 1.5 (defaults)"),
        ("secrets caught", f"{len(secrets) - len(missed_ours)}/{len(secrets)}",
         f"{len(secrets) - len(missed_theirs)}/{len(secrets)}"),
        ("ordinary rows flagged", f"{len(flagged_ours)}/{len(ordinary)}",
         f"{len(flagged_theirs)}/{len(ordinary)}"),
        ("µs per line (median of 7)", f"{ours_s * 1e6:.1f}", f"{theirs_s * 1e6:.1f}"),
    ]  # fmt: skip
    for row in table:
        print(f"{row[0]:<28}{row[1]:>14}   {row[2]}")
    print("missed by bot.redact:", ", ".join(missed_ours) or "none")
    print("missed by detect-secrets:", ", ".join(missed_theirs) or "none")
    print("ordinary rows detect-secrets flags:", len(flagged_theirs))
    for text in flagged_theirs[:5]:
        print("   ", text[:90])
    print(
        json.dumps(
            {
                "secrets": len(secrets),
                "ordinary": len(ordinary),
                "ours": {
                    "missed": missed_ours,
                    "flagged": len(flagged_ours),
                    "us_per_line": round(ours_s * 1e6, 2),
                },
                "detect_secrets": {
                    "missed": missed_theirs,
                    "flagged": len(flagged_theirs),
                    "us_per_line": round(theirs_s * 1e6, 2),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
