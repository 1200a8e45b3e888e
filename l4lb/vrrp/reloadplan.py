"""Plan what a reload does to the running VRRP instances: which stop, which start, which change.

Pure: compares the running [[vrrp]] instances and [[vrrp_sync_group]] tables with a new,
validated configuration's; the daemon carries the plan out on its loop (Daemon._apply_vrrp).
Instances are matched by name, as keepalived matches them on a reload.

- **Removed**: the instance leaves the group as at a graceful stop (a master sends its
  priority-0 advert and removes its VIPs), so the peer takes over after Skew_Time.
- **Added**: it starts as at start-up (BACKUP first, or MASTER at once as the address owner).
- **Changed**: the new settings replace the old ones. Where the instance stays the same virtual
  router (`same_router`: interface, VRID and address family) and was MASTER, it stays MASTER:
  no priority-0 advert, no gap in the adverts, the VIPs it keeps never leave the interface,
  the ones the new settings drop are removed and new ones added (with GARP / unsolicited NA),
  and no notify program runs, since the state did not change. A peer with a higher priority
  (say, because the reload lowered this node's) then takes over by the usual rules. In any
  other state, or when it becomes another virtual router, the old instance stops as a removed
  one does and the new one starts as an added one.

What still waits for a restart (`restart`, and the running instances stay as they are): any
change to the [[vrrp_sync_group]] tables, and any added, removed or changed instance that is
(or was) a member of a sync group. A group decides for its members together (l4lb.vrrp.sync),
and swapping one member under it would split the group between the nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from l4lb.config.model import SyncGroupSettings
from l4lb.vrrp.settings import VrrpSettings


@dataclass(frozen=True)
class VrrpPlan:
    """What a reload changes in VRRP, by instance name, in the order of the new file."""

    removed: tuple[str, ...] = ()  # stop gracefully
    added: tuple[str, ...] = ()  # start
    changed: tuple[str, ...] = ()  # replace the settings (a master of the same router stays)
    restart: str = ""  # not "": nothing is applied, and this says why it waits for a restart

    @property
    def empty(self) -> bool:
        return not (self.removed or self.added or self.changed or self.restart)

    def summary(self) -> str:
        """`vrrp: VI_2 added, VI_1 changed, VI_3 removed`, "" when nothing changes (or when it
        waits for a restart: the reload says that itself)."""
        if self.restart:
            return ""
        parts = [f"{name} {what}" for what, names in (("added", self.added),
                                                      ("changed", self.changed),
                                                      ("removed", self.removed))
                 for name in names]
        return "vrrp: " + ", ".join(parts) if parts else ""


def same_router(old: VrrpSettings, new: VrrpSettings) -> bool:
    """Whether `new` speaks for the same virtual router as `old` (a master may stay master)."""
    return (old.interface, old.virtual_router_id, old.family) == \
        (new.interface, new.virtual_router_id, new.family)


def plan(running: Sequence[VrrpSettings], new: Sequence[VrrpSettings],
         running_groups: Sequence[SyncGroupSettings] = (),
         new_groups: Sequence[SyncGroupSettings] = ()) -> VrrpPlan:
    """The plan from the running instances and groups to the new ones."""
    old_by_name = {s.name: s for s in running}
    new_by_name = {s.name: s for s in new}
    removed = tuple(s.name for s in running if s.name not in new_by_name)
    added = tuple(s.name for s in new if s.name not in old_by_name)
    changed = tuple(s.name for s in new
                    if s.name in old_by_name and old_by_name[s.name] != s)
    if tuple(running_groups) != tuple(new_groups):
        return VrrpPlan(restart="[[vrrp_sync_group]] changed")
    members = sorted({name for name in (*removed, *changed)
                      if old_by_name[name].sync_group is not None}
                     | {name for name in (*added, *changed)
                        if new_by_name[name].sync_group is not None})
    if members:
        return VrrpPlan(restart="[[vrrp]] changed for a sync group member: "
                                + ", ".join(members))
    return VrrpPlan(removed=removed, added=added, changed=changed)
