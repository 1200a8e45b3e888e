"""Plan a reload: what differs between the running configuration and a new, valid one.

Pure: compares two validated Configs and says which listeners to bind or release, which
services and backends come and go, and which changed settings cannot apply without a restart
(they are reported and the running value stays). Listeners are identified by their address, so a
listen address that stays (even if it moves to another service) keeps its bound sockets and
nothing is ever re-bound needlessly. Every changed `[global]` key and `[metrics] listen` is named
in the summary, whether it applies at once or waits for a restart, so that a reload never says
"no change" while something changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from l4lb.config.durations import format_duration_ms
from l4lb.config.model import Config, Endpoint, GlobalSettings
from l4lb.state import address_text

# [global] keys that only take effect at start; a reload keeps their running values.
RESTART_ONLY = ("workers", "control_socket", "listen_backlog")
METRICS_LISTEN = "metrics.listen"  # [metrics] listen: the HTTP server is bound once at start
GLOBAL_KEYS = tuple(f.name for f in fields(GlobalSettings))


@dataclass(frozen=True)
class ReloadPlan:
    """The difference between two configurations, in the order it must be applied."""

    bind: tuple[tuple[str, Listen], ...] = ()  # (service, listener) to bind anew
    release: tuple[Listen, ...] = ()  # listeners no service uses any more
    move: tuple[tuple[str, Listen], ...] = ()  # kept listener now serving another service
    services_added: tuple[str, ...] = ()
    services_removed: tuple[str, ...] = ()
    services_changed: tuple[str, ...] = ()  # settings or backends differ
    backends_added: tuple[tuple[str, str], ...] = ()  # (service, address as written)
    backends_removed: tuple[tuple[str, str], ...] = ()
    restart_needed: tuple[str, ...] = field(default=())  # keys whose change waits (restart)
    settings_changed: tuple[tuple[str, str, str], ...] = ()  # (key, old, new) of [global] keys
    #                                   and metrics.listen, as text, restart-only ones included

    @property
    def empty(self) -> bool:
        """Nothing to bind, release or publish (changed settings may still need applying)."""
        return not (self.bind or self.release or self.move or self.services_added
                    or self.services_removed or self.services_changed)

    def summary(self) -> str:
        parts = []
        for label, items in (("services added", self.services_added),
                             ("services removed", self.services_removed),
                             ("services changed", self.services_changed)):
            if items:
                parts.append(f"{label}: {', '.join(items)}")
        for label, pairs in (("backends added", self.backends_added),
                             ("backends removed", self.backends_removed)):
            if pairs:
                parts.append(f"{label}: {', '.join(f'{s}/{a}' for s, a in pairs)}")
        if self.bind:
            parts.append(f"new listeners: {', '.join(f'{p} {e}' for _, (p, e) in self.bind)}")
        if self.release:
            parts.append(f"listeners closed: {', '.join(f'{p} {e}' for p, e in self.release)}")
        for key, before, after in self.settings_changed:
            text = f"{key} {before} -> {after}"
            if key in self.restart_needed:
                text += " (needs a restart; the running value stays)"
            elif key == "hash_seed":
                text += " (every maglev and source_hash client is remapped)"
            parts.append(text)
        return "; ".join(parts) or "no change"


Listen = tuple[str, Endpoint]  # (protocol, address): TCP and UDP may share an address


def _setting_text(key: str, value: object) -> str:
    if value is None:
        return "off"
    if key == "shutdown_timeout" and isinstance(value, float):
        return format_duration_ms(round(value * 1000))
    return str(value)


def settings_changed(old: Config, new: Config) -> tuple[tuple[str, str, str], ...]:
    """(key, old, new) for every [global] key and for metrics.listen that differ."""
    out = [(k, _setting_text(k, getattr(old.global_, k)), _setting_text(k, getattr(new.global_, k)))
           for k in GLOBAL_KEYS if getattr(old.global_, k) != getattr(new.global_, k)]
    if old.metrics_listen != new.metrics_listen:
        out.append((METRICS_LISTEN, _setting_text(METRICS_LISTEN, old.metrics_listen),
                    _setting_text(METRICS_LISTEN, new.metrics_listen)))
    return tuple(out)


def _listen_map(config: Config) -> dict[Listen, str]:
    return {(s.protocol, e): s.name for s in config.services for e in s.listen}


def plan(old: Config, new: Config) -> ReloadPlan:
    """Compute the plan; both configurations are already valid."""
    old_listen, new_listen = _listen_map(old), _listen_map(new)
    bind = tuple((svc, e) for e, svc in new_listen.items() if e not in old_listen)
    release = tuple(e for e in old_listen if e not in new_listen)
    move = tuple((svc, e) for e, svc in new_listen.items()
                 if e in old_listen and old_listen[e] != svc)
    old_svcs = {s.name: s for s in old.services}
    new_svcs = {s.name: s for s in new.services}
    added = tuple(n for n in new_svcs if n not in old_svcs)
    removed = tuple(n for n in old_svcs if n not in new_svcs)
    changed = tuple(n for n in new_svcs if n in old_svcs and new_svcs[n] != old_svcs[n])
    b_added: list[tuple[str, str]] = []
    b_removed: list[tuple[str, str]] = []
    for name in new_svcs.keys() | old_svcs.keys():
        before = ({address_text(b) for b in old_svcs[name].backends} if name in old_svcs
                  else set())
        after = ({address_text(b) for b in new_svcs[name].backends} if name in new_svcs
                 else set())
        b_added += [(name, a) for a in sorted(after - before)]
        b_removed += [(name, a) for a in sorted(before - after)]
    settings = settings_changed(old, new)
    restart = tuple(k for k, _, _ in settings if k in RESTART_ONLY or k == METRICS_LISTEN)
    return ReloadPlan(bind=bind, release=release, move=move, services_added=added,
                      services_removed=removed, services_changed=changed,
                      backends_added=tuple(sorted(b_added)),
                      backends_removed=tuple(sorted(b_removed)), restart_needed=restart,
                      settings_changed=settings)
