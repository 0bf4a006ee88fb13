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
