"""The batch's offline index page: one self-contained ``index.html`` over every case of an output folder.

The page needs nothing but the files beside it: no external CSS, JavaScript or fonts, no network. Each row whose
status is ``"ok"`` shows its QC picture as a thumbnail (the case's own ``<case_id>/qc.png`` scaled down by CSS
and loaded lazily by the browser, so no second image file is written) linking to the full picture; other rows
have no thumbnail and are highlighted when they failed. Every text is HTML-escaped (case ids come from file
names) and every link is a percent-encoded relative URL.

A row is a mapping of column name to value. Keys the page reads itself:

- ``case_id`` (required) and ``status`` (``"ok"``, ``"failed"``, ``"skipped"``, or anything else, counted apart);
- ``engine`` and ``engine_trained_on_real_data`` (bool): a row of an engine not trained on real data puts a red
  note naming the engine(s) at the top of the page.

Values are shown as: ``None`` empty, floats with 4 significant digits, booleans ``yes``/``no``, others ``str``.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

from hecktor.core.files import atomic_write

__all__ = ["INDEX_NAME", "QC_NAME", "qc_link", "write_index_html"]

INDEX_NAME = "index.html"
QC_NAME = "qc.png"
_COUNTED_STATUSES = ("ok", "failed", "skipped")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 16px; color: #1a1a1a; }
h1 { font-size: 20px; margin: 0 0 8px 0; }
.totals { font-size: 15px; margin: 4px 0 12px 0; }
.totals span { margin-right: 18px; }
.note { background: #9b1c1c; color: #fff; font-weight: bold; padding: 8px 12px; margin: 8px 0; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #c8c8c8; padding: 4px 6px; text-align: left; vertical-align: top; white-space: nowrap; }
td.wrap { white-space: normal; max-width: 360px; overflow-wrap: anywhere; }
td.wrap.long { min-width: 180px; }
th { background: #2d3748; color: #fff; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td { background: #fde2e2; }
tr.failed td.status { color: #a00000; font-weight: bold; }
tr.skipped td { color: #666; }
img.thumb { width: 200px; height: auto; display: block; border: 1px solid #999; }
"""


def qc_link(case_id: str) -> str:
    """The relative URL of a case's QC picture, ``<case_id>/qc.png`` with the id percent-encoded."""
    return f"{quote(case_id, safe='')}/{QC_NAME}"


def write_index_html(output_dir: Path, rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> Path:
    """Write ``output_dir/index.html`` (whole or not at all) and return its path.

    Args:
        output_dir: the batch's output folder; a case's QC picture is ``output_dir/<case_id>/qc.png``.
        rows: one mapping per case (see the module docstring for the keys the page reads itself).
        columns: the keys shown as table columns, in order, after the thumbnail (``case_id`` and ``status``
            are worth listing first); a key a row lacks shows an empty cell.
    """
    output_dir = Path(output_dir)
    target = output_dir / INDEX_NAME
    page = _page(output_dir, rows, columns)
    atomic_write(target, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return target


def _page(output_dir: Path, rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
    statuses = Counter(str(row.get("status", "")) for row in rows)
    totals = [f"<span>cases: <b>{len(rows)}</b></span>"]
    totals += [f"<span>{name}: <b>{statuses.get(name, 0)}</b></span>" for name in _COUNTED_STATUSES]
    other = len(rows) - sum(statuses.get(name, 0) for name in _COUNTED_STATUSES)
    if other:
        totals.append(f"<span>other status: <b>{other}</b></span>")
    untrained = sorted({str(row.get("engine", "unknown engine")) for row in rows
                        if row.get("engine_trained_on_real_data") is False})
    note = ""
    if untrained:
        note = (f'<p class="note">NOT A TRAINED NETWORK: {_escape(", ".join(untrained))} \u2014 '
                "research/QC use only. These segmentations and the measurements from them come from an engine "
                "that was not trained on real data.</p>")
    header = "".join(f"<th>{_escape(column)}</th>" for column in ["QC", *columns])
    body = "\n".join(_row(output_dir, row, columns) for row in rows)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>HECKTOR batch QC index</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>HECKTOR batch QC index</h1>
<p class="totals">{"".join(totals)}</p>
{note}
<table>
<thead><tr>{header}</tr></thead>
<tbody>
{body}
</tbody>
</table>
</body>
</html>
"""


def _row(output_dir: Path, row: Mapping[str, object], columns: Sequence[str]) -> str:
    case_id = str(row.get("case_id", ""))
    status = str(row.get("status", ""))
    thumbnail = ""
    if status == "ok":
        if (output_dir / case_id / QC_NAME).is_file():
            link = _escape(qc_link(case_id))
            thumbnail = (f'<a href="{link}"><img class="thumb" src="{link}" loading="lazy" '
                         f'alt="QC picture of {_escape(case_id)}"></a>')
        else:
            thumbnail = "no QC picture"
    css_class = status if status in _COUNTED_STATUSES else "other"
    cells = [f"<td>{thumbnail}</td>"]
    for column in columns:
        value = row.get(column)
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        # Long free text (an error message, an id) wraps; the short columns stay on one line.
        text = _format(value)
        flags = (("num", numeric), ("status", column == "status"), ("wrap", column == "error"
                 or len(text) > 40), ("long", len(text) > 40))
        classes = " ".join(name for name, on in flags if on)
        class_attribute = f' class="{classes}"' if classes else ""
        cells.append(f"<td{class_attribute}>{_escape(text)}</td>")
    return f'<tr class="{css_class}">{"".join(cells)}</tr>'


def _format(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _escape(text: str) -> str:
    return html.escape(text, quote=True)
