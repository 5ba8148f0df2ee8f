"""`shipwatch demo`: two releases at demo speed on the embedded defaults, then the console.

A healthy release of `checkout` walks 1% → 100% and bakes; a second one gets slower on its
canary after its first step and is rolled back by itself, with its diagnosis. Every message
is printed as it would appear in Slack. No Slack, no Prometheus URL and no OpenAI key needed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

from bot.policy import Policy

SCRIPT = [
    "# 1. A healthy release: it advances by itself while its metrics hold.",
    'deploy checkout v2 --stable v1 --notes "Cart totals update instantly."',
    "await checkout",
    "# 2. A faulty release: after its first step its canary gets 4x slower.",
    'deploy checkout v3 --notes "New recommendations widget on the cart page."',
    "wait 5s",
    "fault checkout latency_p99 4 v3",
    "await checkout",
    "wait 1s",
    "history checkout",
]


def demo_policy(
    policy: Policy, *, interval: float = 1.0, hold: float = 4.0, bake: float = 5.0
) -> Policy:
    """Seconds instead of minutes, so a whole release plays out while you watch."""
    services = {
        name: sp.model_copy(
            update={
                "interval": interval,
                "hold": hold,
                "bake": bake,
                "window": max(5.0, interval * 5),
                "steps": [s.model_copy(update={"hold": None}) for s in sp.steps],
            }
        )
        for name, sp in policy.services.items()
    }
    return policy.model_copy(update={"services": services})


def scripted_input(interactive: bool, echo: Callable[[str], None]) -> Callable[[], str]:
    """Feed the script to the console line by line, then the user's input (or the end)."""
    lines: Iterator[str] = iter(SCRIPT)

    def read_line() -> str:
        for line in lines:
            if line.startswith("#"):
                echo(f"\n{line}")
                continue
            return line + "\n"
        if interactive:
            echo("\nThe demo is over; the console is yours (try `help`, or `quit`).")
            return sys.stdin.readline()
        return ""

    return read_line
