"""BackendView.as_dict(), the cheap stand-in for dataclasses.asdict() in `status`: the same
keys, in the same order, with the same values, for every field."""

from __future__ import annotations

import dataclasses

from l4lb.daemon import BackendView


def test_as_dict_is_asdict() -> None:
    fields = dataclasses.fields(BackendView)
    view = BackendView("web", "10.0.0.1:80", "a")
    for k, f in enumerate(fields[3:]):  # every optional field set to a distinct value
        setattr(view, f.name, {str: f"v{k}", bool: True}.get(type(getattr(view, f.name)), k))
    assert view.as_dict() == dataclasses.asdict(view)
    assert list(view.as_dict()) == [f.name for f in fields]
    copy = view.as_dict()
    copy["weight"] = -1  # a copy: the view is not changed through it
    assert view.weight != -1
