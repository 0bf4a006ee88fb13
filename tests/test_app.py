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
