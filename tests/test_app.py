"""The command line (app.py)."""
from tests.conftest import make_pdf


PAGES = [f"Page {i}. " + "The keeper lit the lantern at the north wall before the storm. " * 12 for i in range(1, 5)]


def test_ingest_ray_flag_takes_an_address_or_leaves_the_file_alone(tmp_path):
    from app import _parser, _ray_address_or_file

    book = make_pdf(tmp_path / "b.pdf", PAGES[:1])
    parse = lambda *argv: _ray_address_or_file(_parser().parse_args(list(argv)))  # noqa: E731
    a = parse("ingest", "--ray", str(book))
    assert a.ray == "local" and a.files == [book]
    a = parse("ingest", "--ray", "ray://head:10001", "--ray-actors", "4", "--int8", str(book))
    assert (a.ray, a.ray_actors, a.int8, a.files) == ("ray://head:10001", 4, True, [book])
    a = parse("ingest", str(book))
    assert a.ray is None and a.int8 is None and a.files == [book]


def test_ingest_waits_for_both_stages_or_not_and_status_shows_the_queue(tome_tiny, tmp_path, capsys):
    from app import _ask, _ingest, _list, _status

    a, b = make_pdf(tmp_path / "a.pdf", PAGES), make_pdf(tmp_path / "b.pdf", PAGES[:2])
    assert _ingest(tome_tiny, [a, b], None, wait=False) == 0
    out = capsys.readouterr().out
    assert "a.pdf: #1 'a'" in out and "askable after" in out and "2 book(s) queued for compression" in out
    assert _status(tome_tiny) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["book", "stage", "segments", "ETA"]
    n = len(tome_tiny.store.segments(1))
    assert lines[1].split()[:6] == ["a", "2/2", "queued", "(kvzip", "8x)", f"0/{n}"] and "ETA unknown" in lines[1]
    assert lines[2].startswith("b ") and len(lines) == 3
    assert _ask(tome_tiny, ["a"], "Who lit the lantern?", 2, "compressed") == 0  # answered uncompressed
    assert f"memories of a are 0/{n} segments done (ETA unknown); answering uncompressed" in capsys.readouterr().err
    c = make_pdf(tmp_path / "c.pdf", PAGES[:1])
    assert _ingest(tome_tiny, [c], None) == 0  # waits: runs c's job here (a and b stay queued)
    assert "c.pdf: memories made" in capsys.readouterr().out
    _list(tome_tiny)
    listing = capsys.readouterr().out
    assert "queued 0/" in listing and listing.rstrip().endswith("ready")
    tome_tiny.compress_queued()
    assert _status(tome_tiny) == 0
    assert capsys.readouterr().out.startswith("Nothing queued")
