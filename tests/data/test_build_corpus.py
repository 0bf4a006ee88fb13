"""The corpus builder's cleaning, filtering and split (no downloads: the package readers are not run here)."""
from data import build_corpus as bc

SENTENCE = "The ferryman walked to the end of the pier and looked at the sky before the storm came in."


def test_html_keeps_paragraph_prose_and_drops_code_tables_and_navigation():
    page = f"""<html><head><title>T</title><style>p {{}}</style></head><body>
    <div class="navheader">Prev Next</div>
    <p>{SENTENCE} Run <code>apt update</code> first.</p>
    <pre>for i in range(3):\n    print(i)</pre>
    <table><tr><td>a</td><td>b</td></tr></table>
    <p>Second &amp; last paragraph.</p><div class="navfooter">Home</div></body></html>"""
    assert bc.html_paragraphs(page) == [f"{SENTENCE} Run apt update first.", "Second & last paragraph."]


def test_rst_keeps_top_level_paragraphs_with_inline_markup_reduced():
    text = f"""Title
=====

{SENTENCE} See :func:`os.path.join` and ``x = 1``
or `the docs <https://x.org>`_ for **more**.

.. note::

   An indented directive body.

::

    code block
"""
    assert bc.rst_paragraphs(text) == [f"{SENTENCE} See os.path.join and x = 1 or the docs for more."]


def test_pod_keeps_ordinary_paragraphs():
    text = f"=head1 NAME\n\n{SENTENCE} Use C<print> and L<perlfunc|perlfunc/print>.\n\n    my $x = 1;\n"
    assert bc.pod_paragraphs(text) == [f"{SENTENCE} Use print and perlfunc."]


def test_documents_must_be_long_english_prose():
    prose = [SENTENCE] * 40
    assert bc.make_doc("a", "A", prose) is not None
    assert bc.make_doc("b", "B", prose[:5]) is None  # too short
    listing = [f"option{i} value{i} default{i} flag{i} mode{i} size{i}" for i in range(200)]
    assert bc.make_doc("c", "C", listing + prose[:10]) is None  # mostly a list
    italian = ["Questo documento è destinato agli sviluppatori del kernel, in particolar modo ai manutentori."] * 60
    assert bc.make_doc("d", "D", italian) is None


def test_split_is_stable_per_document_and_near_the_fraction():
    ids = [f"src/doc{i}" for i in range(4000)]
    held = [i for i in ids if bc.is_heldout(i, 0.05)]
    assert 0.04 < len(held) / len(ids) < 0.06
    assert held == [i for i in reversed(ids) if bc.is_heldout(i, 0.05)][::-1]  # order does not matter
    assert all(bc.is_heldout(i, 0.2) for i in held)  # a larger fraction only adds documents
