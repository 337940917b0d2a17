"""The hand-written sample PDF is well formed: header, objects at the xref offsets, stream lengths, trailer."""

from __future__ import annotations

import re

import pytest

from mineru_fleet.sandbox.samplepdf import DEFAULT_LINES, DEFAULT_TABLE, DEFAULT_TITLE, make_sample_pdf, sample_pdf_bytes


def _parse(data: bytes) -> dict:
    """A strict little reader for what samplepdf writes: returns objects by number and the trailer."""
    assert data.startswith(b"%PDF-1.4\n")
    assert data.endswith(b"%%EOF\n")
    m = re.search(rb"startxref\n(\d+)\n%%EOF\n$", data)
    assert m, "no startxref"
    xref = int(m.group(1))
    assert data[xref : xref + 5] == b"xref\n"
    head = re.match(rb"xref\n0 (\d+)\n", data[xref:])
    count = int(head.group(1))
    pos = xref + head.end()
    entries = [data[pos + 20 * i : pos + 20 * (i + 1)] for i in range(count)]
    assert entries[0] == b"0000000000 65535 f \n"
    objects = {}
    for number, entry in enumerate(entries[1:], start=1):
        assert re.fullmatch(rb"\d{10} 00000 n \n", entry), entry
        off = int(entry[:10])
        assert data[off:].startswith(b"%d 0 obj\n" % number), (number, off, data[off : off + 20])
        end = data.index(b"\nendobj\n", off)
        objects[number] = data[off + len(b"%d 0 obj\n" % number) : end]
    trailer = data[pos + 20 * count :]
    assert trailer.startswith(b"trailer\n")
    assert b"/Size %d" % count in trailer
    return {"objects": objects, "trailer": trailer, "xref": xref}


@pytest.fixture(scope="module")
def pdf(tmp_path_factory):
    return make_sample_pdf(tmp_path_factory.mktemp("pdf") / "sample.pdf")


def test_well_formed(pdf):
    data = pdf.read_bytes()
    parsed = _parse(data)
    objs = parsed["objects"]
    root = int(re.search(rb"/Root (\d+) 0 R", parsed["trailer"]).group(1))
    assert objs[root].startswith(b"<< /Type /Catalog")
    pages = int(re.search(rb"/Pages (\d+) 0 R", objs[root]).group(1))
    assert b"/Type /Pages" in objs[pages] and b"/Count 1" in objs[pages]
    kids = [int(k) for k in re.findall(rb"(\d+) 0 R", re.search(rb"/Kids \[([^\]]*)\]", objs[pages]).group(1))]
    assert len(kids) == 1 and b"/Type /Page " in objs[kids[0]]
    contents = int(re.search(rb"/Contents (\d+) 0 R", objs[kids[0]]).group(1))
    body = objs[contents]
    length = int(re.match(rb"<< /Length (\d+) >>\nstream\n", body).group(1))
    start = body.index(b"stream\n") + len(b"stream\n")
    assert body[start + length :] == b"endstream", "stream /Length is wrong"
    stream = body[start : start + length]
    for font in re.findall(rb"/(F\d) \d+ Tf", stream):
        assert font in objs[kids[0]]  # every font used is in the page's resources


def test_text_and_table(pdf):
    data = pdf.read_bytes()
    assert b"(" + DEFAULT_TITLE.encode() + b") Tj" in data
    for line in DEFAULT_LINES:
        assert b"(" + line.encode() + b") Tj" in data
    cells = [c for row in DEFAULT_TABLE for c in row]
    assert len(DEFAULT_TABLE) == 3 and all(len(r) == 3 for r in DEFAULT_TABLE)
    for cell in cells:
        assert b"(" + cell.encode() + b") Tj" in data
    # 4 horizontal + 4 vertical rules of the 3x3 grid
    assert len(re.findall(rb"\d+ \d+ m \d+ \d+ l S", data)) == 8


def test_escaping_and_determinism():
    tricky = sample_pdf_bytes(title="A (tricky) \\ title", lines=["caf\u00e9 (x)"], table=[["a", "b", "c"]] * 3)
    _parse(tricky)
    assert b"(A \\(tricky\\) \\\\ title) Tj" in tricky
    assert b"(caf\xe9 \\(x\\)) Tj" in tricky
    assert sample_pdf_bytes() == sample_pdf_bytes()
    assert 1000 < len(sample_pdf_bytes()) < 4000
