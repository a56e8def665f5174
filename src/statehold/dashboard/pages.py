"""HTML for each page, from the rows of :mod:`statehold.dashboard.views`.

Plain strings and ``html.escape`` (every value from the cluster is escaped); no script.
Action buttons appear only for the verbs in ``allowed`` (decided by access reviews), and
each leads to a confirmation page whose form carries the CSRF token.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from urllib.parse import urlencode

from statehold.dashboard import views
from statehold.dashboard.actions import TITLE, Action

NAV = (("/pools", "Nodes and pools"), ("/volumes", "Volumes"), ("/snapshots", "Snapshots"),
       ("/backups", "Backups"), ("/schedules", "Schedules"), ("/restores", "Restores"))

CSS = """
body{font-family:sans-serif;margin:0;color:#222}
header{background:#1f3a5f;color:#fff;padding:.6em 1em}
header a{color:#fff;margin-right:1.2em;text-decoration:none}
header a.here{text-decoration:underline}
main{padding:1em}
table{border-collapse:collapse;margin-bottom:1.5em}
th,td{border-bottom:1px solid #ddd;padding:.3em .8em;text-align:left}
.bar{width:16em;height:1em;background:#e4e8ee;border:1px solid #99a}
.fill{height:100%;background:#3a7bd5}
.Failed{color:#b00}.Completed{color:#070}
form.inline{display:inline}
.who{float:right}
"""


def h(value: object) -> str:
    return escape(str(value), quote=True)


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def layout(title: str, here: str, body: str, *, user: str) -> str:
    nav = "".join(f'<a href="{p}"{" class=here" if p == here else ""}>{h(t)}</a>'
                  for p, t in NAV)
    who = (f'<span class="who">{h(user)} · <a href="/logout">sign out</a></span>' if user
           else '<span class="who"><a href="/login">sign in to act</a></span>')
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<link rel="icon" href="data:,"><title>{h(title)} · Statehold</title>'
            f'<style>{CSS}</style></head><body><header>{nav}{who}</header>'
            f'<main><h1>{h(title)}</h1>{body}</main></body></html>')


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, id_: str) -> str:
    """rows are already HTML (cells escaped by the caller)."""
    head = "".join(f"<th>{h(x)}</th>" for x in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table id="{h(id_)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def button(verb: str, **params: str) -> str:
    return (f'<a class="action" data-action="{h(verb)}" '
            f'href="/confirm?{h(urlencode({"verb": verb, **params}))}">{h(TITLE[verb])}</a>')


def pools_page(rows: list[views.PoolRow]) -> str:
    def bar(p: views.PoolRow) -> str:
        return (f'<div class="bar" data-pool="{h(p.name)}" data-capacity="{p.capacity}" '
                f'data-allocated="{p.allocated}" title="{p.used_percent}%">'
                f'<div class="fill" style="width:{p.used_percent}%"></div></div>')
    return table(("Pool", "Node", "Phase", "Used", "Allocated", "Capacity", "Free",
                  "Provisioned", "Volumes"),
                 ((h(p.name), h(p.node), h(p.phase), bar(p) + f"{p.used_percent}%",
                   h(human(p.allocated)), h(human(p.capacity)), h(human(p.free)),
                   h(human(p.provisioned)), str(p.volumes)) for p in rows), id_="pools")


def volumes_page(rows: list[views.VolumeRow], allowed: dict[str, set[str]],
                 targets: dict[str, list[str]]) -> str:
    def acts(v: views.VolumeRow) -> str:
        may = allowed.get(v.namespace, set())
        out = []
        if "snapshot" in may and v.claim:
            out.append(button("snapshot", ns=v.namespace, subject=v.claim))
        if "backup" in may and v.claim and targets.get(v.namespace):
            out.append(button("backup", ns=v.namespace, subject=v.claim))
        return " ".join(out)
    return table(("Namespace", "Claim", "Volume", "Node", "Size", "State", "Copies",
                  "Actions"),
                 ((h(v.namespace), h(v.claim), h(v.volume), h(v.node), h(v.size),
                   h(v.state), h(v.copies), acts(v))
                  for v in rows), id_="volumes")


def snapshots_page(rows: list[views.SnapshotRow]) -> str:
    return table(("Namespace", "Snapshot", "Claim", "Ready", "Size", "Created"),
                 ((h(s.namespace), h(s.name), h(s.claim), "yes" if s.ready else "no",
                   h(s.size), h(s.created)) for s in rows), id_="snapshots")


def backups_page(lines: list[views.Timeline], allowed: dict[str, set[str]]) -> str:
    if not lines:
        return "<p>No backups yet.</p>"
    parts = []
    for line in lines:
        may = allowed.get(line.namespace, set())
        rows = []
        for b in line.backups:
            act = (button("restore", ns=line.namespace, subject=b.name)
                   if "restore" in may and b.phase == "Completed" else "")
            rows.append((h(b.started), h(b.name), h(b.target),
                         f'<span class="{h(b.phase)}">{h(b.phase)}</span>',
                         h(human(b.bytes_total)) if b.bytes_total else "", h(b.reason), act))
        parts.append(f"<h2>{h(line.namespace)}/{h(line.claim)}</h2>" + table(
            ("Started", "Backup", "Target", "Result", "Size", "Reason", "Actions"), rows,
            id_=f"timeline-{line.namespace}-{line.claim}"))
    return "".join(parts)


def schedules_page(rows: list[views.ScheduleRow]) -> str:
    return table(("Namespace", "Schedule", "Cron", "Target", "Last run", "Next run", "Reason"),
                 ((h(s.namespace), h(s.name), h(s.schedule), h(s.target), h(s.last),
                   h(s.next), h(s.reason)) for s in rows), id_="schedules")


def restores_page(rows: list[views.RestoreRow]) -> str:
    return table(("Namespace", "Restore", "Backup", "New claim", "Phase", "Reason"),
                 ((h(r.namespace), h(r.name), h(r.backup), h(r.claim), h(r.phase),
                   h(r.reason)) for r in rows), id_="restores")


def confirm_page(action: Action, csrf: str, targets: list[str]) -> str:
    fields = [f'<input type="hidden" name="{k}" value="{h(v)}">' for k, v in (
        ("csrf", csrf), ("verb", action.verb), ("ns", action.namespace),
        ("subject", action.subject))]
    what = {"snapshot": f"Take a VolumeSnapshot of claim {action.namespace}/{action.subject}",
            "backup": f"Create a VolumeBackup of claim {action.namespace}/{action.subject}",
            "restore": f"Create a VolumeRestore of backup {action.namespace}/{action.subject} "
                       "into a new claim"}[action.verb]
    if action.verb == "backup":
        opts = "".join(f'<option value="{h(t)}">{h(t)}</option>' for t in targets)
        fields.append(f'<label>Target <select name="target">{opts}</select></label>')
    if action.verb == "restore":
        fields.append('<label>New claim <input name="new_claim" required '
                      'pattern="[a-z0-9]([-a-z0-9]*[a-z0-9])?"></label>')
    return (f'<p>{h(what)}?</p><form method="post" action="/act">{"".join(fields)} '
            f'<button type="submit" id="confirm">Confirm</button> '
            f'<a href="/volumes">Cancel</a></form>')


def done_page(kind: str, name: str, namespace: str) -> str:
    return f"<p id=\"created\">Created {h(kind)} {h(namespace)}/{h(name)}.</p>"


def login_page(csrf: str, error: str = "") -> str:
    err = f'<p class="Failed">{h(error)}</p>' if error else ""
    return (f"{err}<p>Paste a Kubernetes bearer token (e.g. <code>kubectl create token "
            f"NAME</code>). The dashboard acts with it; it is kept in a cookie for this "
            f'browser only.</p><form method="post" action="/login">'
            f'<input type="hidden" name="csrf" value="{h(csrf)}">'
            f'<input type="password" name="token" id="token" size="60" required> '
            f'<button type="submit" id="signin">Sign in</button></form>')
