"""Who is asking: a Slack user id plus the user groups of the policy they belong to.

Group membership comes from `usergroups.users.list`, cached in Redis for a few minutes so a
burst of commands costs one call per group, and shared by every bot process.
"""

from __future__ import annotations

import logging

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.release.policy import ServicePolicy
from bot.release.rollout import Actor
from bot.store.store import Store
from handlers.client import slack_error

log = logging.getLogger(__name__)

GROUP_CACHE_SECONDS = 300


def group_ids(sp: ServicePolicy) -> set[str]:
    """The policy entries that are Slack user-group ids (S…)."""
    return {p for p in (*sp.deployers, *sp.approvers) if p.startswith("S") and p[1:].isalnum()}


async def actor_for(
    user_id: str, sp: ServicePolicy | None, client: AsyncWebClient, store: Store
) -> Actor:
    if sp is None:
        return Actor(user=user_id, surface="slack")
    groups = set()
    for group in sorted(group_ids(sp)):
        if user_id in await members(group, client, store):
            groups.add(group)
    return Actor(user=user_id, surface="slack", groups=frozenset(groups))


async def members(group: str, client: AsyncWebClient, store: Store) -> set[str]:
    cached = await store.cached_group_members(group)
    if cached is not None:
        return cached
    try:
        response = await client.usergroups_users_list(usergroup=group)
    except SlackApiError as exc:
        # Unknown group or missing scope: nobody is in it, and the refusal names the group.
        log.warning("cannot list user group %s: %s", group, slack_error(exc))
        return set()
    users = [str(u) for u in response.get("users") or []]
    await store.cache_group_members(group, users, GROUP_CACHE_SECONDS)
    return set(users)
