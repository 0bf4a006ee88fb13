"""An answer that only restates the question is marked: the reader found no answer in the passages."""
import pytest

from tome.doubt import restates_question
from ui.handlers import doubt_message


@pytest.mark.parametrize("answer, question", [  # echoes Qwen2.5-0.5B gave on the real manuals
    ("Setting which environment variable to NULL makes R load only package base at startup.",
     "Setting which environment variable to NULL makes R load only package base at startup?"),
    ("The argument of eigen() skips computing the eigenvectors when only the eigenvalues are needed.",
     "Which argument of eigen() skips computing the eigenvectors when only the eigenvalues are needed?"),
    ("According to the passage, HISTCONTROL is shorthand for both ignorespace and ignoredups.",
     "Which value of HISTCONTROL is shorthand for both ignorespace and ignoredups?"),
    ("", "What is the vault code?"),
])
def test_an_echo_of_the_question_is_no_answer(answer, question):
    assert restates_question(answer, question)


@pytest.mark.parametrize("answer, question", [  # right answers, some of one short word
    ("The default value of dotfactor is 6.", "What is the default value of dotfactor in Asymptote?"),
    ("R 1.7.1", "Which R version first had this feature?"),
    ("The mode string \"rb\" opens an R connection for reading binary data.",
     "Which mode string opens an R connection for reading binary data?"),
    ("Yes.", "Is the vault open on Sundays?"),
])
def test_an_answer_with_a_word_of_its_own_is_an_answer(answer, question):
    assert not restates_question(answer, question)


def test_the_note_says_which_doubt():
    assert doubt_message({}) is None
    assert "restates the question" in doubt_message({"restates_question": True})["content"]
    assert "confidence 0.12" in doubt_message({"low_confidence": True, "confidence": 0.123})["content"]


def test_the_note_says_when_the_best_page_was_read_again():
    found = doubt_message({"reread": {"pages": ["R-FAQ, p. 7"]}, "restates_question": False})
    assert found["metadata"]["title"] == "Re-read the best page" and "re-reading R-FAQ, p. 7 alone" in found["content"]
    still = doubt_message({"reread": {"pages": ["R-FAQ, p. 7"]}, "restates_question": True})
    assert still["metadata"]["title"] == "⚠ No clear answer" and "also after re-reading R-FAQ, p. 7" in still["content"]


@pytest.mark.parametrize("answer, read, foreign", [  # (Qwen2.5-0.5B's answers on the real manuals)
    ("The function `cat` writes complete text lines to a connection.",
     ["writeLines writes complete text lines to a connection; concatenate them first."], ["cat"]),
    ("The variable that gives the id is `PPID`.", ["$BASHPID expands to the process ID of the current Bash"],
     ["PPID"]),
    ("Set `R_DEFAULT_PACKAGES` to NULL.", ["The variable R DEFAULT PACKAGES", "to NULL makes R load only base"], []),
    ("Use read.csv() or `read.table`.", ["read.table and read.csv read files"], []),
    ("It is 60 seconds.", ["MAILCHECK"], []),  # no term named: nothing foreign
    ("Use $PIPESTATUS after the pipeline.", ["PIPESTATUS: an array variable"], []),
])
def test_terms_named_without_being_read_are_foreign(answer, read, foreign):
    from tome.doubt import foreign_terms

    assert foreign_terms(answer, read) == foreign


def test_the_note_names_the_terms_that_were_not_read():
    note = doubt_message({"foreign_terms": ["PPID", "<b>"]})  # escaped: the chat renders HTML
    assert note["metadata"]["title"] == "⚠ Named, not read" and "names PPID, &lt;b&gt;, which" in note["content"]
    after = doubt_message({"foreign_terms": ["cat"], "reread": {"pages": ["R-data, p. 9"]}})
    assert after["metadata"]["title"] == "⚠ Named, not read" and "also after re-reading R-data, p. 9" in after["content"]
    assert doubt_message({"foreign_terms": []}) is None
