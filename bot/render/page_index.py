"""The index of release pages (active releases, then the latest finished ones), and the pages
that say why a release page cannot be shown and how to get one that can."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bot.engine.release_page import Index
from bot.release.rollout import Release
from bot.render.page_kit import document, h, when
from bot.render.status import STATE_BADGE

# The link to a release's page ("" when none can be given: then the row has no link).
LinkTo = Callable[[Release], str]


def _row(r: Release, link_to: LinkTo) -> str:
    badge, words = STATE_BADGE[r.state]
    href = link_to(r)
    name = f'<a href="{h(href)}">{h(r.service)}</a>' if href else h(r.service)
    return (
        f'<tr><th scope="row">{name}</th><td><span class="version">{h(r.version)}</span></td>'
        f'<td>{badge} {h(words)}</td><td class="num">{r.weight}%</td>'
        f"<td>{when(r.created_at)}</td><td>{when(r.finished_at)}</td></tr>"
    )


def _table(releases: Sequence[Release], link_to: LinkTo, empty: str, table_id: str) -> str:
    if not releases:
        return f'<p class="meta">{h(empty)}</p>'
    rows = "".join(_row(r, link_to) for r in releases)
    return (
        f'<div class="scroll"><table id="{table_id}"><thead><tr><th scope="col">service</th>'
        '<th scope="col">version</th><th scope="col">state</th><th scope="col">weight</th>'
        '<th scope="col">started</th><th scope="col">finished</th></tr></thead>'
        f"<tbody>{rows}</tbody></table></div>"
    )


def index_page(index: Index, link_to: LinkTo, nonce: str) -> str:
    body = (
        '<main id="index"><header class="card"><h1>Releases</h1>'
        '<p class="meta">Every release shipwatch runs now, and the latest finished ones, of the '
        "services your token may read.</p></header>"
        '<section aria-labelledby="h-active"><h2 id="h-active">Active</h2>'
        f"{_table(index.active, link_to, 'No release is running.', 'active')}</section>"
        '<section aria-labelledby="h-recent"><h2 id="h-recent">Recently finished</h2>'
        f"{_table(index.recent, link_to, 'None kept.', 'recent')}</section></main>"
    )
    return document("Releases · shipwatch", body, nonce)


def refusal_page(title: str, message: str, how: str, nonce: str) -> str:
    """A page that says what is wrong (``message``) and what to do about it (``how``)."""
    body = (
        f'<main id="refusal"><header class="card"><h1>{h(title)}</h1></header>'
        f'<section><p class="reason" id="message">{h(message)}</p>'
        f'<p class="reason" id="how">{h(how)}</p></section></main>'
    )
    return document(f"{h(title)} · shipwatch", body, nonce)


FRESH_LINK = (
    "Open the release's status message in its Slack channel and use its “Release page” link: "
    "it is renewed every time the release changes. Without Slack, ask someone in the channel, "
    "or use an API token (Authorization: Bearer …) of the service."
)
