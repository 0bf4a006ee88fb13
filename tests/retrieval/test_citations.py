"""Citations: the quote shown under an answer."""
from retrieval.citations import snippet

SHOPT = ("The shell option nullglob makes the pattern expand to nothing when it matches no files. "
         "The shell option dotglob makes the pattern match hidden files. "
         "With globstar set, two stars match directories recursively. "
         "The shell option nocaseglob makes the pattern ignore case. "
         "The shell option failglob makes a pattern that matches nothing an error. "
         "The shell option extglob makes the pattern language richer.")


def test_snippet_starts_at_the_sentence_with_the_rarest_question_words():
    q = "Which shell option makes the pattern match directories recursively?"
    # every sentence but one shares "shell option makes the pattern"; the one that answers shares the rare words
    # (a plain count of shared words started at the dotglob sentence)
    assert snippet(SHOPT, q).startswith("… With globstar set, two stars match directories recursively.")
    start = SHOPT[:200].rsplit(" ", 1)[0] + " …"  # cut at a word within 200 characters
    assert snippet(SHOPT) == snippet(SHOPT, "Who painted the harbour?") == start  # no question, nothing shared
    # stems meet: "computing" finds "computed"
    t2 = "Eigenvalues come first. Eigenvectors are computed unless only.values is set. Then more."
    assert snippet(t2, "Which argument skips computing eigenvectors?").startswith("… Eigenvectors are computed")
