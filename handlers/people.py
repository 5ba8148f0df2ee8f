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
from bot.store import keys
from bot.store.store import Store

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
    key = keys.group_members(group)
    cached = await store.redis.smembers(key)
    if cached:
        return {str(m) for m in cached} - {""}
    try:
        response = await client.usergroups_users_list(usergroup=group)
    except SlackApiError as exc:
        # Unknown group or missing scope: nobody is in it, and the refusal names the group.
        log.warning("cannot list user group %s: %s", group, exc.response.get("error"))
        return set()
    users = [str(u) for u in response.get("users") or []]
    async with store.redis.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        pipe.sadd(key, "", *users)  # "" marks a cached empty group
        pipe.expire(key, GROUP_CACHE_SECONDS)
        await pipe.execute()
    return set(users)
