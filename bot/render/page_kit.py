"""The shell every release page shares: the HTML document, its inline style and script, the
escaping of outside text, and the headers that lock the page down.

Nothing outside is loaded: the style and the script are inline and carry the response's nonce,
which the Content-Security-Policy names; everything else is refused (no frames, no forms, no
other origins). Outside text (service, versions, notes, names, reasons, metric names) only ever
reaches the page through :func:`h`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape

from bot.redact import redact
from bot.render.mrkdwn import shown

# Seconds between reloads when the browser runs no script (the live update needs it).
NO_SCRIPT_REFRESH_S = 15


def h(text: object) -> str:
    """Outside text as HTML text or an attribute value: secrets redacted (the page leaves the
    bot like a chat message does), escaped, quotes included, with the bidi and control
    characters that could disguise it removed."""
    return escape(shown(redact(str(text))), quote=True)


def when(ts: float | None) -> str:
    """A ``<time>`` in UTC, or a dash."""
    if ts is None:
        return "—"
    moment = datetime.fromtimestamp(ts, UTC)
    iso = moment.isoformat(timespec="seconds").replace("+00:00", "Z")
    return f'<time datetime="{iso}">{moment.strftime("%Y-%m-%d %H:%M:%S")} UTC</time>'


def content_security_policy(nonce: str) -> str:
    return (
        "default-src 'none'; "
        f"style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
        "connect-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def page_headers(nonce: str) -> dict[str, str]:
    """The headers of every page: the policy, no sniffing, no referrer (a signed link is a
    credential and must not leak to another site), and no caching of a credentialed page."""
    return {
        "Content-Security-Policy": content_security_policy(nonce),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        "X-Frame-Options": "DENY",
    }


# Phone first: one column, tables scroll inside their own box, nothing wider than the screen.
STYLE = """
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;
background:#f6f7f9}
main{max-width:960px;margin:0 auto;padding:12px}
h1{font-size:1.45rem;margin:.2em 0;overflow-wrap:anywhere}
h2{font-size:1.05rem;margin:0 0 .5em}
section,header.card{background:#fff;border:1px solid #e3e5e8;border-radius:8px;padding:12px;
margin:0 0 12px;min-width:0}
.meta{color:#555;margin:.2em 0;overflow-wrap:anywhere}
.version{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;background:#eef1f4;
padding:0 .3em;border-radius:4px;overflow-wrap:anywhere}
.badge{display:inline-block;padding:.1em .6em;border-radius:999px;font-weight:600;
background:#e8eef8}
.state-succeeded{background:#dff3e6}.state-rolled_back,.state-rolling_back{background:#fbe1e3}
.state-paused,.state-pending_approval{background:#fff1d6}
.weight{font-size:2.4rem;font-weight:700;line-height:1.1}
svg.bar{display:block;margin:.4em 0}
ol.ladder{list-style:none;margin:0;padding:0;display:flex;flex-wrap:wrap;gap:6px}
ol.ladder li{flex:1 1 88px;min-width:0;border:1px solid #d5d9de;border-radius:6px;
padding:6px;font-size:.85rem}
ol.ladder li b{display:block;font-size:1.1rem}
ol.ladder li.done{background:#eef8f1;border-color:#9ed2ad}
ol.ladder li.current{background:#e8eef8;border-color:#3a6ea5;border-width:2px}
ol.ladder li.todo{color:#777}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;max-width:100%}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eceef1;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.o-pass{color:#1e7b41}.o-fail{color:#b3121f;font-weight:600}.o-no_data{color:#666}
.o-error{color:#a35f00;font-weight:600}
.reason{overflow-wrap:anywhere}
.text{white-space:pre-wrap;overflow-wrap:anywhere;margin:0}
.why{border-left:4px solid #d62839;padding-left:8px}
svg.chart{display:block;width:100%;min-width:520px;height:auto}
.legend span{margin-right:10px;white-space:nowrap}
.live-note{display:none;color:#555;font-size:.85rem}
.live .live-note{display:block}
footer{color:#666;font-size:.85rem;padding:0 4px 16px}
a{color:#1f5fa8}
"""

# The live update: when the server says the release changed, fetch this page's <main> again
# (``?part=main``) and swap it in; a browser without script reloads by the <noscript> refresh.
SCRIPT = """
(function () {
  var main = document.getElementById("release");
  if (!main || !window.EventSource || !window.fetch) return;
  var url = main.getAttribute("data-events");
  if (!url) return;
  document.documentElement.classList.add("live");
  var busy = false, again = false;
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    // Only the <main>, parsed in an inert template: a whole page would bring a <style> with
    // another response's nonce, which this page's policy (rightly) refuses.
    var url = new URL(location.href);
    url.searchParams.set("part", "main");
    fetch(url.toString(), {headers: {"Accept": "text/html"}, cache: "no-store",
                           credentials: "same-origin"})
      .then(function (r) { if (!r.ok) throw new Error(String(r.status)); return r.text(); })
      .then(function (text) {
        var holder = document.createElement("template");
        holder.innerHTML = text;
        var fresh = holder.content.getElementById("release");
        if (fresh) { main.replaceWith(fresh); main = fresh; }
      })
      .catch(function () {})
      .then(function () { busy = false; if (again) { again = false; refresh(); } });
  }
  var events = new EventSource(url);
  events.addEventListener("changed", refresh);
  events.addEventListener("end", function () { events.close(); refresh(); });
})();
"""


def document(title: str, body: str, nonce: str, *, live: bool = False) -> str:
    """A whole page. ``title`` and ``body`` are HTML already (built with :func:`h`)."""
    refresh = (
        f'<noscript><meta http-equiv="refresh" content="{NO_SCRIPT_REFRESH_S}"></noscript>'
        if live
        else ""
    )
    script = f'<script nonce="{nonce}">{SCRIPT}</script>' if live else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{title}</title>{refresh}"
        f'<style nonce="{nonce}">{STYLE}</style></head><body>'
        f"{body}<footer>shipwatch · read-only</footer>"
        f"{script}</body></html>"
    )
