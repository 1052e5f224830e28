"""The KLIK dossier (``report --html`` / ``--pdf``) as a person receives it: parsed with an HTML5
parser as a browser parses it, shown and printed by a real headless Chromium, and printed to
PDF/A by WeasyPrint. States come from the real demo, from the real CLI against aiosmtpd, and
for the crowded case from the store's own transaction API (30 people, every milestone,
several mails the same day).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import html5lib
import pytest

from mailtracker.app import NOW_ENV, open_app
from mailtracker.models import (
    DeliveryState,
    Evidence,
    MilestoneRecord,
    Notification,
    NotificationState,
    QuarantineEntry,
    Recipient,
)
from tests.plugins.browser import Chromium, pdf_pages, pdf_text
from tests.plugins.smtpd import SmtpTestServer
from tests.plugins.workspace import THREE, Workspace

ROOT = Path(__file__).resolve().parents[1]
CPH = ZoneInfo("Europe/Copenhagen")
NS = {"h": "http://www.w3.org/1999/xhtml"}
MILESTONES_DA = ["Serviceaftale modtaget fra EG", "Serviceaftale underskrevet",
                 "Vejledning modtaget fra EG", "Invitation til webinar modtaget",
                 "Webinar aflyst", "Webinar afholdt",
                 "Videresendelse pr. EAN opsat i ØS Indsigt", "eFaktura bekræftet modtaget i KP"]
HOSTILE = ["<script>alert(1)</script>", '"><img src=x onerror=alert(2)>',
           "\u202eevil\u202c <b>fed</b>", "</title><style>*{display:none}</style>"]


def parse(page: Path) -> Any:
    return html5lib.parse(page.read_bytes(), treebuilder="etree", namespaceHTMLElements=True)


def text_of(tree: Any) -> str:
    return " ".join(" ".join(e.itertext()) for e in tree.iter()
                    if e.tag.endswith("body"))


def assert_self_contained(tree: Any) -> None:
    """No script, nothing loaded from anywhere: it must read the same offline in ten years."""
    tags = {e.tag.rpartition("}")[2] for e in tree.iter() if isinstance(e.tag, str)}
    assert not tags & {"script", "img", "iframe", "object", "embed", "link", "video", "audio"}
    for e in tree.iter():
        if not isinstance(e.tag, str):
            continue
        for name, value in e.attrib.items():
            assert not name.lower().startswith("on"), (e.tag, name)
            if name.rpartition("}")[2].lower() in ("src", "href", "data", "srcset"):
                assert not re.match(r"\s*(https?:|//|javascript:)", value, re.I), value
    css = " ".join("".join(e.itertext()) for e in tree.iter() if str(e.tag).endswith("style"))
    assert "url(" not in css and "@import" not in css


# ---------------------------------------------------------------------------- the demo's state


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``mailtracker demo --keep DIR`` as a user runs it; it leaves DIR/report.html."""
    where = tmp_path_factory.mktemp("demo") / "ws"
    result = subprocess.run([sys.executable, "-m", "mailtracker", "demo", "--keep", str(where)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"The KLIK dossier of this state: {where / 'report.html'}" in result.stdout
    yield where


def demo_status(demo: Path) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-m", "mailtracker", "--config",
                             str(demo / "config" / "mailtracker.toml"), "status", "--json"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT, check=True)
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_the_demo_leaves_a_self_contained_dossier_that_names_everyone(demo: Path) -> None:
    page = demo / "report.html"
    tree = parse(page)
    assert_self_contained(tree)
    root = tree.getroot() if hasattr(tree, "getroot") else tree
    html = next(e for e in tree.iter() if str(e.tag).endswith("html"))
    assert html.get("lang") == "da"
    assert tree.find(".//h:h1", NS) is not None
    assert len(tree.findall(".//h:h2", NS)) >= 5
    for table in tree.findall(".//h:table", NS):
        assert table.findall(".//h:th", NS), "every table has header cells"
    svg = tree.find(".//{http://www.w3.org/2000/svg}svg")
    assert svg is not None and svg.get("role") == "img"
    text = text_of(root)
    status = demo_status(demo)
    for r in status["recipients"]:
        assert r["name"] in text and r["email"] in text
    for label in MILESTONES_DA:
        assert label in text
    assert f"KLIK-status {status['klik_status']}" in " ".join(text.split())
    assert "Afvist (bounce)" in text or "afvist (bounce)" in text  # the demo's bounce
    assert "Mailenes indhold gemmes ikke" in text and "mailtracker forget" in text
    assert os.stat(page).st_mode & 0o077 == 0  # names and addresses: not for other users


def test_chromium_shows_and_prints_the_demo_dossier(demo: Path, chromium: Chromium,
                                                    tmp_path: Path) -> None:
    from PIL import Image

    page = demo / "report.html"
    shot = chromium.screenshot(page, tmp_path / "report.png")
    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "the screenshot is (nearly) blank"
    pdf = chromium.print_pdf(page, tmp_path / "report.pdf")
    assert pdf_pages(pdf) <= 3
    printed = " ".join(pdf_text(pdf).split())
    assert "(eFaktura 8b) Serviceaftaler og vejledning fra Ejerkredsen og EG" in printed
    for r in demo_status(demo)["recipients"]:
        assert r["name"] in printed
    texts, overlaps = timeline_labels(chromium, page, tmp_path)
    assert "I dag" in texts and "Orientering sendt" in texts
    assert overlaps == []


# ---------------------------------------------------------------------------- a crowded state


NOW = datetime(2026, 5, 20, 14, 0, tzinfo=CPH)


def crowded_state(ws: Workspace, people: int = 30) -> list[Recipient]:
    """30 people, every milestone, several mails on the same day, every outbox state."""
    app = open_app(ws.config_path, {**ws.environ, NOW_ENV: NOW.isoformat()})
    roles = ["system_owner", "agreement_admin", "oeir_coordinator", "finance", "kp_owner"]
    day = datetime(2026, 3, 2, 9, 0, tzinfo=CPH)
    recipients = [Recipient(f"person{i:02d}@kommune.example", f"Person Nummer {i:02d} Ærø",
                            roles[i % len(roles)], added_at=day) for i in range(people)]
    with app.store.transaction() as txn:
        for i, r in enumerate(recipients):
            txn.put_recipient(r)
            role = app.task.role(r.role)
            assert role is not None
            sent = day + timedelta(minutes=i)  # all on the same morning
            state = [NotificationState.SENT, NotificationState.SENT, NotificationState.FAILED,
                     NotificationState.UNKNOWN, NotificationState.SENT][i % 5]
            txn.put_notification(Notification(
                app.task.key, r.email, role.template, f"<o{i}@kommune.example>", state=state,
                attempts=1, created_at=sent, updated_at=sent,
                sent_at=sent if state is NotificationState.SENT else None,
                last_error=None if state is NotificationState.SENT else "451 4.3.0 try later",
                subject="eFaktura til KP – orientering",
                acknowledged_at=sent + timedelta(hours=1) if i % 3 == 0 else None,
                delivery=DeliveryState.BOUNCED if i % 7 == 6 else DeliveryState.NONE,
                bounce_reason="5.1.1 user unknown" if i % 7 == 6 else None))
            if state is NotificationState.SENT and i % 3 != 0:
                # a reminder, then EG's guide passed on a day or two later: marks whose
                # labels would run into each other on one row
                reminded = day + timedelta(days=7 + i % 4, minutes=i)
                txn.put_notification(Notification(
                    app.task.key, r.email, "reminder-orientation-1", f"<r{i}@kommune.example>",
                    state=NotificationState.SENT, attempts=1, created_at=sent,
                    sent_at=reminded, subject="Påmindelse"))
                txn.put_notification(Notification(
                    app.task.key, r.email, "event-guide_received", f"<e{i}@kommune.example>",
                    state=NotificationState.SENT, attempts=1, created_at=sent,
                    sent_at=reminded + timedelta(days=1 + i % 2), subject="Vejledning"))
        for j, m in enumerate(app.task.milestones):
            at = datetime(2026, 3, 16, 10, 0, tzinfo=CPH) + timedelta(minutes=j)  # same day
            details = {"auth": "mx.kommune.example: dmarc=pass for eg.dk"}
            if m.key == "webinar_invited":
                details["start"] = datetime(2026, 4, 15, 10, 0, tzinfo=CPH).isoformat()
            evidence = (Evidence("mail", f"<m{j}@eg.dk>", "kundeservice@eg.dk",
                                 f"{m.label_da} – mail fra EG", details=details)
                        if m.source == "mail" else
                        Evidence("manual", recorded_by="Karen", note=f"Noteret: {m.label_da}"))
            txn.put_milestone(app.task.key, MilestoneRecord(m.key, at, evidence))
        for k, verdict in enumerate(("pending", "accepted", "rejected")):
            txn.put_quarantine(QuarantineEntry(
                f"q{k}", app.task.key, f"<q{k}@evil.example>",
                datetime(2026, 3, 10, 8, k, tzinfo=CPH), "kundeservice@eg.dk",
                f"Serviceaftale {k}", "mx.kommune.example: dmarc=fail for eg.dk",
                "service_agreement_received", state=verdict,
                decided_at=None if verdict == "pending" else datetime(2026, 3, 11, tzinfo=CPH),
                decided_by=None if verdict == "pending" else "Karen"))
    return recipients


@pytest.fixture
def crowded(make_workspace: Callable[..., Workspace]) -> tuple[Workspace, list[Recipient]]:
    ws = make_workspace()
    return ws, crowded_state(ws)


def report(ws: Workspace, *args: str, now: datetime = NOW) -> Any:
    return ws.cli("report", *args, env={NOW_ENV: now.isoformat()})


_MEASURE = """<script>
const boxes = [...document.querySelectorAll('svg.timeline text')].map(t => {
  const r = t.getBoundingClientRect();
  return {text: t.textContent, x: r.x, y: r.y, w: r.width, h: r.height};
});
const out = document.createElement('pre');
out.id = 'boxes';
out.textContent = JSON.stringify(boxes);
document.body.appendChild(out);
</script>"""


def timeline_labels(chromium: Chromium, page: Path, tmp_path: Path
                    ) -> tuple[list[str], list[tuple[str, str]]]:
    """The timeline's texts as the browser laid them out, and the pairs whose boxes overlap.
    Read from a test copy with a script added (the report itself has none)."""
    measured = tmp_path / f"measured-{page.name}"
    html = page.read_text(encoding="utf-8")
    measured.write_text(html.replace("</body>", _MEASURE + "</body>"), encoding="utf-8")
    dom = chromium.dom_after_scripts(measured)
    found = re.search(r'<pre id="boxes">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    boxes = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&")
                       .replace("&lt;", "<").replace("&gt;", ">"))
    labels = [b for b in boxes if b["w"] > 0]
    overlaps = [(a["text"], b["text"]) for i, a in enumerate(labels) for b in labels[i + 1:]
                if a["x"] < b["x"] + b["w"] - 0.5 and b["x"] < a["x"] + a["w"] - 0.5
                and a["y"] < b["y"] + b["h"] - 0.5 and b["y"] < a["y"] + a["h"] - 0.5]
    return [b["text"] for b in labels], overlaps


def test_no_two_timeline_labels_overlap_in_a_crowded_state(
        crowded: tuple[Workspace, list[Recipient]], chromium: Chromium, tmp_path: Path) -> None:
    ws, people = crowded
    page = tmp_path / "crowded.html"
    result = report(ws, "--html", str(page))
    assert result.exit_code == 0, result.output
    texts, overlaps = timeline_labels(chromium, page, tmp_path)
    assert sum(t.startswith("Person Nummer") for t in texts) == len(people)  # every lane
    sent = [i for i in range(len(people)) if i % 5 in (0, 1, 4)]  # as crowded_state sends
    reminded = [i for i in sent if i % 3 != 0]
    assert len([t for t in texts if t.endswith(" sendt")]) == len(sent) + 2 * len(reminded)
    assert overlaps == []


def test_the_crowded_dossier_has_every_fact_and_every_decision(
        crowded: tuple[Workspace, list[Recipient]], tmp_path: Path) -> None:
    ws, people = crowded
    page = tmp_path / "r.html"
    assert report(ws, "--html", str(page)).exit_code == 0
    tree = parse(page)
    assert_self_contained(tree)
    text = " ".join(text_of(tree).split())
    for r in people:
        assert r.name in text and r.email in text
    assert "451 4.3.0 try later" in text and "5.1.1 user unknown" in text
    assert "afsender godkendt: mx.kommune.example: dmarc=pass for eg.dk" in text
    assert "markeret af Karen: Noteret: eFaktura bekræftet modtaget i KP" in text
    for verdict in ("afventer gennemgang", "godkendt", "afvist"):
        assert verdict in text
    assert "påmindelse" in text


# ---------------------------------------------------------------------------- overdue, escaping


def test_an_overdue_milestone_is_said_in_words_and_shape(
        smtp_server: SmtpTestServer, make_workspace: Callable[..., Workspace],
        tmp_path: Path) -> None:
    ws = make_workspace(smtp=smtp_server)
    ws.add_recipients([*THREE, ("kp_owner", "Karen Pedersen", "karen@kommune.example")])
    sent = datetime(2026, 2, 23, 9, 0, tzinfo=CPH)
    assert ws.cli("notify", env={NOW_ENV: sent.isoformat()}).exit_code == 0
    page = tmp_path / "late.html"
    later = sent + timedelta(weeks=7)
    assert report(ws, "--html", str(page), now=later).exit_code == 0
    tree = parse(page)
    notes = [" ".join("".join(p.itertext()).split()) for p in tree.findall(".//h:p", NS)
             if "overdue" in (p.get("class") or "")]
    assert any(n.startswith("Forsinket: Serviceaftale modtaget fra EG (frist 6. apr. 2026")
               for n in notes), notes
    rule = tree.find(".//{http://www.w3.org/2000/svg}g[@class='rule overdue']")
    assert rule is not None  # drawn as its own shape, not only in red
    assert "FORSINKET: Serviceaftale modtaget fra EG" in "".join(rule.itertext())
    on_time = tmp_path / "early.html"
    assert report(ws, "--html", str(on_time), now=sent + timedelta(days=3)).exit_code == 0
    assert "Forsinket:" not in on_time.read_text(encoding="utf-8")
    ahead = parse(on_time).find(".//{http://www.w3.org/2000/svg}g[@class='rule deadline']")
    assert ahead is not None  # the coming deadline is on the timeline, as a deadline
    assert "Frist: Serviceaftale modtaget fra EG" in "".join(ahead.itertext())


def test_hostile_names_subjects_and_notes_are_text_never_markup(
        make_workspace: Callable[..., Workspace], tmp_path: Path) -> None:
    ws = make_workspace()
    app = open_app(ws.config_path, {**ws.environ, NOW_ENV: NOW.isoformat()})
    long_subject = ("Serviceaftale " + HOSTILE[1] + " ") * 80  # over 2,000 characters
    with app.store.transaction() as txn:
        for i, name in enumerate(HOSTILE):
            txn.put_recipient(Recipient(f"h{i}@kommune.example", name, "system_owner"))
        txn.put_quarantine(QuarantineEntry(
            "q1", app.task.key, "<x@evil.example>", NOW - timedelta(days=1),
            "kundeservice@eg.dk", long_subject, HOSTILE[0], "service_agreement_received"))
    # (``mark`` itself refuses control characters such as the RTL override in a note)
    marked = ws.cli("mark", "erp_forwarding_configured", "--note", HOSTILE[1] + HOSTILE[0],
                    "--by", HOSTILE[3], env={NOW_ENV: NOW.isoformat()})
    assert marked.exit_code == 0, marked.output
    page = tmp_path / "hostile.html"
    assert report(ws, "--html", str(page)).exit_code == 0
    tree = parse(page)
    assert_self_contained(tree)
    text = text_of(tree)
    for hostile in HOSTILE:
        assert hostile in text  # shown as the characters they are
    assert long_subject.strip() in text
    titles = [e for e in tree.iter() if str(e.tag).endswith("}title")]
    assert len([t for t in titles if str(t.tag) == "{http://www.w3.org/1999/xhtml}title"]) == 1


# ---------------------------------------------------------------------------- PDF, options


def test_pdf_through_weasyprint_has_metadata_text_and_pdfa(
        crowded: tuple[Workspace, list[Recipient]], tmp_path: Path) -> None:
    pytest.importorskip("weasyprint", reason="the pdf extra is not installed")
    from pypdf import PdfReader

    ws, people = crowded
    pdf = tmp_path / "dossier.pdf"
    result = report(ws, "--pdf", str(pdf), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["pdf"] == str(pdf)
    reader = PdfReader(pdf)
    meta = reader.metadata
    assert meta is not None
    assert meta.title == ("KLIK-dossier: (eFaktura 8b) Serviceaftaler og vejledning fra "
                          "Ejerkredsen og EG – Eksempel Kommune")
    assert meta.author == "Eksempel Kommune"
    assert reader.trailer["/Root"].get("/Lang") == "da"
    xmp = reader.xmp_metadata
    assert xmp is not None
    raw = xmp.stream.get_data().decode("utf-8")
    assert re.search(r"pdfaid:part(>|=\")3", raw) and re.search(
        r"pdfaid:conformance(>|=\")B", raw), raw[:2000]
    printed = " ".join(pdf_text(pdf).split())
    for r in people:
        assert r.name in printed


def test_pdf_without_the_extra_says_in_one_line_how_to_get_it(
        crowded: tuple[Workspace, list[Recipient]], tmp_path: Path) -> None:
    ws, _ = crowded
    script = ("import sys; sys.modules['weasyprint'] = None\n"  # as if it were not installed
              "from mailtracker.cli import main; main()")
    result = subprocess.run(
        [sys.executable, "-c", script, "--config", str(ws.config_path), "report", "--pdf",
         str(tmp_path / "x.pdf")], capture_output=True, text=True, cwd=ROOT, timeout=60,
        env={**os.environ, **ws.environ}, check=False)
    assert result.returncode == 14, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'mailtracker[pdf]'" in lines[0], lines
    assert not (tmp_path / "x.pdf").exists()


def test_report_reads_only_and_refuses_what_it_cannot_do(
        crowded: tuple[Workspace, list[Recipient]], tmp_path: Path) -> None:
    ws, _ = crowded
    before = {p.name: p.read_bytes() for p in ws.store_path.parent.glob("mailtracker.json*")}
    nothing = report(ws)
    assert nothing.exit_code == 2 and "give --html PATH, --pdf PATH or both" in nothing.output
    nowhere = report(ws, "--html", str(tmp_path / "missing" / "r.html"))
    assert nowhere.exit_code == 9 and "does not exist" in nowhere.output
    piped = report(ws, "--html", "-")
    assert piped.exit_code == 0 and piped.stdout.startswith("<!DOCTYPE html>")
    assert "</html>" in piped.stdout and not (tmp_path / "-").exists()
    assert report(ws, "--html", "-", "--json").exit_code == 2
    english = tmp_path / "en.html"
    assert report(ws, "--html", str(english), "--lang", "en").exit_code == 0
    tree = parse(english)
    assert next(e for e in tree.iter() if str(e.tag).endswith("html")).get("lang") == "en"
    assert "Recipients" in text_of(tree) and "Modtagere" not in text_of(tree)
    after = {p.name: p.read_bytes() for p in ws.store_path.parent.glob("mailtracker.json*")}
    assert after == before  # nothing changed
