"""UI handlers: snippets are escaped before the question words are marked."""


def test_snippet_highlighting_escapes_before_marking():
    from ui.handlers import highlight

    out = highlight("Call <b>read.table</b> & amp it; Table too", ["table", "amp", "b"])
    assert "<b>" not in out and "&lt;<mark>b</mark>&gt;" in out
    assert out.count("<mark>table</mark>") == 2 - 1 and "<mark>Table</mark>" in out
    assert "&amp;" in out and "<mark>amp</mark> it" in out
    assert highlight("x < y", []) == "x &lt; y"
