"""The report's two renderers: one list of sections (study/report.py) as a self-contained HTML page and as Markdown.

A section is a title and blocks: paragraphs, tables, verdicts, figures, and tables of pictures (the gallery). Both
renderers show every block, in the same order. The HTML escapes every string (arm and category names, paths are
the user's); its pictures are inlined, while Markdown links the files written beside it.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass

from scratchdet.study.verdicts import Verdict


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    rows: list[list[str]]  # the first is the header


@dataclass(frozen=True)
class Verdicts:
    verdicts: list[Verdict]


@dataclass(frozen=True)
class Picture:
    png: bytes
    path: str  # the file's path relative to the report (Markdown links it)
    name: str  # the alternative text
    note: str = ""  # shown under it, in a table of pictures


@dataclass(frozen=True)
class Figure:
    picture: Picture
    caption: str


@dataclass(frozen=True)
class PictureTable:
    header: list[str]
    rows: list[tuple[str, list[Picture]]]  # a label, then a picture for each column after the first


Block = Paragraph | Table | Verdicts | Figure | PictureTable


@dataclass(frozen=True)
class Section:
    title: str
    blocks: list[Block]


# ------------------------------------------------------------------------------------------------ Markdown


def markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            lines += [_markdown_block(block), ""]
    return "\n".join(lines)


def _markdown_block(block: Block) -> str:
    match block:
        case Paragraph(text):
            return text
        case Table(rows):
            return _markdown_rows(rows)
        case Verdicts(verdicts):
            return "\n\n".join(
                f"**{v.title}** — *{v.label}*. {v.evidence}\n\nRule: {v.rule}.\n\nConditions: "
                f"{'; '.join(v.conditions)}."
                for v in verdicts
            )
        case Figure(picture, caption):
            return f"![{picture.name}]({picture.path})\n\n{caption}"
        case PictureTable(header, rows):
            cells = [
                [label, *(f"![]({p.path})" + (f" {p.note}" if p.note else "") for p in row)] for label, row in rows
            ]
            return _markdown_rows([header, *cells])
    raise TypeError(block)


def _markdown_rows(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows[1:]])


# ------------------------------------------------------------------------------------------------ HTML

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
.holds{color:#176117;font-weight:bold}.fails{color:#a31515;font-weight:bold}.untested{color:#777}
.inconclusive{color:#8a5a00;font-weight:bold}.rule,.conditions{color:#555;font-size:.9em;margin:.2em 0}
li{margin-bottom:.8em}
figure{margin:1.5em 0}figcaption{color:#555;font-size:.9em}
table.gallery td,table.gallery th{text-align:center;vertical-align:top;font-size:.85em}
table.gallery img{image-rendering:pixelated}"""


def html_page(title: str, sections: list[Section]) -> str:
    escaped = html.escape(title)
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escaped}</title>",
        f"<style>{CSS}</style></head><body><h1>{escaped}</h1>",
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts += [_html_block(block) for block in section.blocks]
    return "\n".join([*parts, "</body></html>"])


def _html_block(block: Block) -> str:
    match block:
        case Paragraph(text):
            return f"<p>{html.escape(text)}</p>"
        case Table(rows):
            return _html_rows(rows)
        case Verdicts(verdicts):
            return "<ul>" + "".join(_html_verdict(v) for v in verdicts) + "</ul>"
        case Figure(picture, caption):
            return f"<figure>{_img(picture)}<figcaption>{html.escape(caption)}</figcaption></figure>"
        case PictureTable(header, rows):
            head = "".join(f"<th>{html.escape(c)}</th>" for c in header)
            body = "".join(
                f"<tr><td>{html.escape(label)}</td>"
                + "".join(f"<td>{_img(p)}" + (f"<br>{html.escape(p.note)}" if p.note else "") + "</td>" for p in row)
                + "</tr>"
                for label, row in rows
            )
            return f"<table class='gallery'><tr>{head}</tr>{body}</table>"
    raise TypeError(block)


def _html_verdict(verdict: Verdict) -> str:
    return (
        f"<li><strong>{html.escape(verdict.title)}</strong>: <span class='{verdict.status.css_class}'>"
        f"{html.escape(verdict.label)}</span>. {html.escape(verdict.evidence)}"
        f"<p class='rule'>Rule: {html.escape(verdict.rule)}.</p>"
        f"<p class='conditions'>Conditions: {html.escape('; '.join(verdict.conditions))}.</p></li>"
    )


def _html_rows(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(picture: Picture) -> str:
    data = base64.b64encode(picture.png).decode("ascii")
    return f"<img src='data:image/png;base64,{data}' alt='{html.escape(picture.name)}'>"
