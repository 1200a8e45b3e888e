"""The agent on the status page: a tag after each agent-checked backend's state badge (what the
agent holds it at, else its last reply; not answering, bad reply) with the `l4lb status` agent
line as its tooltip, in the server's HTML and, from the document's `agents`, in the page
script run by node against a small DOM."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from l4lb.display import agent_note
from l4lb.statuspage import _SCRIPT, agents, render_page, status_json

from .test_review6_views import _DOM_STUB
from .test_statuspage import EVIL, make_status

NOW = 10_000.0


def agent(**over: Any) -> dict[str, Any]:
    view = {"target": "127.0.0.1:9777", "last_reply": "up 100%", "last_reply_at": NOW - 2,
            "weight_percent": 100, "admin": "ready", "health": "up", "reason": "",
            "holds": "", "polls": 9, "replies": 9, "errors": 0, "failures": 0,
            "consecutive_failures": 0, "last_error": None, "last_error_at": None}
    return view | over


def with_agents() -> dict[str, Any]:
    status = make_status()
    b1, b2, b3, _ = status["services"][0]["backends"]
    b1["agent"] = agent()
    b2["agent"] = agent(last_reply="stopped #deploying", health="stopped",
                        reason="deploying", holds="stopped (#deploying)")
    b3["agent"] = agent(consecutive_failures=3, failures=3, last_error="connect refused",
                        last_error_at=NOW - 1)
    return status


WANT = {
    "127.0.0.1:9001": "agent: up 100%",
    "127.0.0.1:9002": "agent: stopped (#deploying)",
    "127.0.0.1:9003": "agent: up 100%, not answering",
}


def test_the_document_has_each_agents_tag_and_tooltip() -> None:
    status = with_agents()
    doc = json.loads(status_json(status, None, now=NOW))
    got = doc["agents"]["web"]
    assert {a: v[0] for a, v in got.items()} == WANT  # the fourth has no agent: left out
    b2 = status["services"][0]["backends"][1]["agent"]
    assert got["127.0.0.1:9002"][1] == agent_note(b2, NOW) == (
        "agent 127.0.0.1:9777: holds stopped (#deploying); last reply 0m2s ago: "
        "'stopped #deploying'")
    # an agent that holds nothing back still has its tooltip (the last reply)
    assert got["127.0.0.1:9001"][1] == \
        "agent 127.0.0.1:9777: holds nothing back; last reply 0m2s ago: 'up 100%'"


def test_bad_replies_long_words_and_no_reply_yet() -> None:
    status = make_status()
    b1, b2, b3, _ = status["services"][0]["backends"]
    b1["agent"] = agent(last_error="unknown word 'drian'", last_error_at=NOW - 1, errors=1)
    b2["agent"] = agent(last_reply="x" * 200)
    b3["agent"] = agent(last_reply=None, last_reply_at=None)
    got = {a: v[0] for a, v in agents(status, NOW)["web"].items()}
    assert got == {"127.0.0.1:9001": "agent: up 100%, bad reply",
                   "127.0.0.1:9002": "agent: " + "x" * 57 + "...",
                   "127.0.0.1:9003": "agent: no reply yet"}


def test_the_html_shows_the_tag_escaped_with_its_tooltip() -> None:
    status = with_agents()
    status["services"][0]["backends"][0]["agent"]["last_reply"] = EVIL
    page = render_page(status, now=NOW)
    assert EVIL not in page
    tags = re.findall(r'<span class="tag agent" title="([^"]*)">([^<]*)</span>', page)
    assert [t[1] for t in tags[1:]] == ["agent: stopped (#deploying)",
                                        "agent: up 100%, not answering"]
    assert tags[1][0].startswith("agent 127.0.0.1:9777: holds stopped (#deploying); ")
    assert "&lt;/script&gt;" in tags[0][1]


_AGENT_REPORT = r"""
pending.shift()();
setImmediate(function () { setImmediate(function () {
  var out = {};
  walk(byId.services, []).filter(function (e) { return e.className === "tag agent"; })
    .forEach(function (e) { out[e.textContent] = e.title; });
  process.stdout.write(JSON.stringify(out));
}); });
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_page_script_draws_the_same_tags(tmp_path: Path) -> None:
    status = with_agents()
    first = json.loads(status_json(make_status(), None, now=NOW - 2))
    second = json.loads(status_json(status, None, now=NOW))
    path = tmp_path / "page.js"
    path.write_text(_DOM_STUB + _SCRIPT + _AGENT_REPORT)
    done = subprocess.run(["node", str(path)], input=json.dumps({"first": first,
                                                                 "second": second}),
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got == {tag: second["agents"]["web"][a][1] for a, tag in WANT.items()}
