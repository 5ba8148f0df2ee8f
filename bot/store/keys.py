"""Every Redis key and channel shipwatch uses. Nothing else in the code spells a key.

All keys live under one prefix so a shared Redis can be inspected (and cleaned) safely. The
prefix is a hash tag: on Redis Cluster every key hashes to the one slot of ``shipwatch``, so
the Lua scripts that change several keys at once (a transition, its audit entries, the active
index) run there as on a single Redis. The flag keys are the exception (see ``flags``).
"""

from __future__ import annotations

PREFIX = "{shipwatch}:"
# Where keys lived before the hash tag; a store moves them under PREFIX once (bot.store.migrate).
LEGACY_PREFIX = "shipwatch:"


def schema() -> str:
    """The layout version of the keys, set once legacy keys were moved (bot.store.migrate)."""
    return f"{PREFIX}schema"


def release(release_id: str) -> str:
    """JSON record of one release (string)."""
    return f"{PREFIX}release:{release_id}"


def active_index() -> str:
    """Hash service -> release id of the one active release per service."""
    return f"{PREFIX}active"


def history(service: str) -> str:
    """List of release ids of a service, newest first."""
    return f"{PREFIX}history:{service}"


def lock(service: str) -> str:
    """JSON {by, at, reason} while a service is locked."""
    return f"{PREFIX}lock:{service}"


def audit() -> str:
    """Append-only stream of every command, decision and transition."""
    return f"{PREFIX}audit"


def lifecycle() -> str:
    """The audit entries that change a release's course or record a person's action: the audit
    stream without the controller's routine hold rounds, which are most of it. Kept apart, and
    far longer, so the release metrics read a fraction of the audit stream."""
    return f"{PREFIX}audit:lifecycle"


def release_lifecycle(release_id: str) -> str:
    """List of the stream ids of a release's entries in the lifecycle stream, oldest first: its
    story read by id (bot.store.store.Store.lifecycle_of); expires with the release."""
    return f"{PREFIX}lifecycle-of:{release_id}"


def idempotency(request_id: str) -> str:
    """Result of a request already applied (Slack retry, double click); expires."""
    return f"{PREFIX}idem:{request_id}"


def lease(release_id: str) -> str:
    """'{owner}|{token}' of the controller driving a release; expires unless renewed."""
    return f"{PREFIX}lease:{release_id}"


def fence(release_id: str) -> str:
    """Monotonic counter handing out fencing tokens for a release's leases."""
    return f"{PREFIX}fence:{release_id}"


def flags() -> str:
    """Hash service -> JSON flag state {pct, canary_version, stable_version, release_id, seq}.

    Its name is the flag SDKs' contract with applications, so it keeps the untagged prefix
    they read; no script touches it together with another key, so Cluster does not mind."""
    return f"{LEGACY_PREFIX}flags"


def flags_channel() -> str:
    """Pub/sub channel on which every flag change is published (same JSON plus the service)."""
    return f"{LEGACY_PREFIX}flags:changes"


def release_seq() -> str:
    """Counter for human-friendly release numbers."""
    return f"{PREFIX}seq:release"


def messages(release_id: str) -> str:
    """Hash {channel, ts, thread_ts} of a release's status message in chat; survives restarts.

    Kept apart from the release record so posting a message never races a state change.
    """
    return f"{PREFIX}messages:{release_id}"


def thread(channel: str, thread_ts: str) -> str:
    """The release id a chat thread belongs to (for questions asked in the thread)."""
    return f"{PREFIX}thread:{channel}:{thread_ts}"


def seen_event(event_id: str) -> str:
    """Marks a chat event as handled: the platform retries deliveries, we act once."""
    return f"{PREFIX}event:{event_id}"


def group_members(group_id: str) -> str:
    """Cached member ids of a chat user group (a set; expires)."""
    return f"{PREFIX}group:{group_id}"


def series(release_id: str) -> str:
    """Capped list of the release's judged numbers per round (JSON), for charts and diagnoses."""
    return f"{PREFIX}series:{release_id}"


def diagnosis(release_id: str) -> str:
    """The text of a release's rollback diagnosis, for its release page (expires)."""
    return f"{PREFIX}diagnosis:{release_id}"


# --- the chat outbox (bot.store.outbox) ---------------------------------------------------------


def outbox_seq() -> str:
    """Counter giving every outbox entry its place in line."""
    return f"{PREFIX}outbox:seq"


def outbox_item(item_id: str) -> str:
    """Hash of one message waiting to be written to chat (what, where, tries so far)."""
    return f"{PREFIX}outbox:item:{item_id}"


def outbox_queue(channel: str) -> str:
    """Sorted set of a channel's waiting entry ids, urgent ones first, then in order."""
    return f"{PREFIX}outbox:queue:{channel}"


def outbox_thread(channel: str, release_id: str) -> str:
    """Set of a release's waiting entry ids in one channel (lifted together when one is urgent,
    so a thread keeps its order)."""
    return f"{PREFIX}outbox:thread:{channel}:{release_id}"


def outbox_status(channel: str) -> str:
    """Sorted set of releases whose status message must show their newest state: one entry per
    release however often it changed (the update renders the record when it is sent)."""
    return f"{PREFIX}outbox:status:{channel}"


def outbox_status_gen(channel: str) -> str:
    """Hash release id -> the change a pending status update was last asked for."""
    return f"{PREFIX}outbox:status-gen:{channel}"


def outbox_status_posting(release_id: str) -> str:
    """Set while a release's status message is being posted without a clear answer yet."""
    return f"{PREFIX}outbox:status-posting:{release_id}"


def outbox_channels() -> str:
    """Sorted set of channels with something to write (score: when it was first asked for)."""
    return f"{PREFIX}outbox:channels"


def outbox_owner(channel: str) -> str:
    """The process writing a channel's queue; expires unless renewed, so one writer per channel."""
    return f"{PREFIX}outbox:owner:{channel}"


def outbox_channel_id(channel: str) -> str:
    """The chat's id for a channel configured by name, learnt from a post's answer."""
    return f"{PREFIX}outbox:channel-id:{channel}"


def outbox_dead() -> str:
    """Capped list of entries chat refused for good (JSON), for an operator to read."""
    return f"{PREFIX}outbox:dead"


def writing_jobs() -> str:
    """Sorted set of 'kind|release id' writing under way -> when its claim lapses; a job left by
    a process that stopped is picked up by the next one."""
    return f"{PREFIX}writing:jobs"


def granted_steps(release_id: str) -> str:
    """How many weight increases an engine that asks first (Flagger) was allowed for a
    release (integer string, expiring with the release's life)."""
    return f"{PREFIX}granted:{release_id}"


def watch(release_id: str) -> str:
    """JSON record of a succeeded release's post-release watch (bot.release.watch); expires."""
    return f"{PREFIX}watch:{release_id}"


def watches() -> str:
    """Set of the release ids whose watch is running: what the watchers visit each round."""
    return f"{PREFIX}watches"


def watch_lease(release_id: str) -> str:
    """'{owner}|{token}' of the process running a release's watch; expires unless renewed."""
    return f"{PREFIX}watch-lease:{release_id}"


def watch_fence(release_id: str) -> str:
    """Fencing counter of the watch leases of a release."""
    return f"{PREFIX}watch-fence:{release_id}"


def digest_posted(channel: str, day: str) -> str:
    """Marker that a channel's daily digest for a local date (YYYY-MM-DD) was claimed; expires."""
    return f"{PREFIX}digest:{channel}:{day}"


def hook_runs(release_id: str) -> str:
    """Hash step -> JSON of where the hooks before that step stand (bot.release.hook_runs);
    expires with the release."""
    return f"{PREFIX}hooks:{release_id}"


def hook_call(token: str) -> str:
    """JSON of a CI job a webhook hook started and the callback it owes (bot.release.hook_runs);
    expires a day after the hook's deadline."""
    return f"{PREFIX}hook-call:{token}"


def hook_call_for(release_id: str, step: int, index: int) -> str:
    """The token of the latest CI job started for one hook of one step: a process that takes
    over the release waits for that job instead of starting another."""
    return f"{PREFIX}hook-call-for:{release_id}:{step}:{index}"
