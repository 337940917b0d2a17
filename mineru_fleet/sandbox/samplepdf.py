"""A small, valid one-page PDF for smoke tests of the MinerU client, written by hand.

No dependency: the objects, the content stream and the cross-reference table
(with exact byte offsets) are assembled here.  The page has a title, a few lines
of text and a 3x3 table drawn with lines, in the standard Helvetica fonts (which
every PDF reader has built in, so nothing is embedded).  Output is deterministic
(no dates, no random ids): the same arguments give the same bytes.

CLI: ``python -m mineru_fleet.sandbox.samplepdf OUT.pdf``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mineru_fleet.sandbox.fsutil import write_atomic

__all__ = ["DEFAULT_LINES", "DEFAULT_TABLE", "DEFAULT_TITLE", "make_sample_pdf", "sample_pdf_bytes"]

DEFAULT_TITLE = "Sample Document Title"
DEFAULT_LINES = (
    "This one-page PDF is used to smoke-test MinerU behind vLLM.",
    "It has a title, a few lines of text and a small table.",
    "With a random-weight model the parsed output is expected to be garbage.",
)
DEFAULT_TABLE = (
    ("Item", "Quantity", "Price"),
    ("Apple", "3", "1.20"),
    ("Pear", "5", "0.80"),
)

PAGE_W, PAGE_H = 595, 842  # A4 in points
MARGIN = 72


def _pdf_str(s: str) -> bytes:
    """A PDF literal string; the text must be Latin-1 (WinAnsi) encodable."""
    b = s.encode("cp1252")
    b = b.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)")
    return b"(" + b.replace(b"\r", b"\\r").replace(b"\n", b"\\n") + b")"


def _content(title: str, lines: tuple[str, ...] | list[str], table) -> bytes:
    ops: list[bytes] = []
    y = PAGE_H - 90
    ops.append(b"BT /F2 20 Tf %d %d Td %s Tj ET" % (MARGIN, y, _pdf_str(title)))
    y -= 40
    for line in lines:
        ops.append(b"BT /F1 11 Tf %d %d Td %s Tj ET" % (MARGIN, y, _pdf_str(line)))
        y -= 16
    # the table: a grid of cells, the first row in bold
    rows, cols = len(table), max(len(r) for r in table)
    cell_w, cell_h = 130, 22
    top = y - 20
    ops.append(b"0.8 w 0 0 0 RG")
    for r in range(rows + 1):
        yy = top - r * cell_h
        ops.append(b"%d %d m %d %d l S" % (MARGIN, yy, MARGIN + cols * cell_w, yy))
    for c in range(cols + 1):
        xx = MARGIN + c * cell_w
        ops.append(b"%d %d m %d %d l S" % (xx, top, xx, top - rows * cell_h))
    for r, row in enumerate(table):
        font = b"/F2" if r == 0 else b"/F1"
        for c, cell in enumerate(row):
            ops.append(
                b"BT %s 11 Tf %d %d Td %s Tj ET"
                % (font, MARGIN + c * cell_w + 6, top - (r + 1) * cell_h + 7, _pdf_str(str(cell)))
            )
    return b"\n".join(ops) + b"\n"


def sample_pdf_bytes(
    title: str = DEFAULT_TITLE,
    lines: tuple[str, ...] | list[str] = DEFAULT_LINES,
    table=DEFAULT_TABLE,
) -> bytes:
    """The PDF file's bytes."""
    content = _content(title, lines, table)
    font = b"<< /Type /Font /Subtype /Type1 /BaseFont /%s /Encoding /WinAnsiEncoding >>"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] "
        b"/Resources << /Font << /F1 4 0 R /F2 5 0 R >> >> /Contents 6 0 R >>" % (PAGE_W, PAGE_H),
        font % b"Helvetica",
        font % b"Helvetica-Bold",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"endstream",
        b"<< /Title %s /Producer (mineru-fleet samplepdf) >>" % _pdf_str(title),
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")  # binary marker comment, as the spec recommends
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n" % (len(objects) + 1)
    out += b"0000000000 65535 f \n"  # each entry is exactly 20 bytes
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 7 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def make_sample_pdf(
    path: Path,
    title: str = DEFAULT_TITLE,
    lines: tuple[str, ...] | list[str] = DEFAULT_LINES,
    table=DEFAULT_TABLE,
) -> Path:
    """Write the one-page sample PDF to ``path`` (atomically) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, sample_pdf_bytes(title, lines, table))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m mineru_fleet.sandbox.samplepdf OUT.pdf")
    print(make_sample_pdf(Path(sys.argv[1])))
