"""Label names: matching listed classes across case and spaces, and a binary task's positive class."""

import pytest

from medpeft.data.labels import NEGATIVE_NAMES, match_class, positive_class
from medpeft.errors import ConfigError


def test_match_class_ignores_case_and_spaces_only_when_one_class_fits():
    assert match_class(" Normal ", ["normal", "tb"]) == "normal"
    assert match_class("tb", ["normal", "tb"]) == "tb"
    assert match_class("TB", ["tb", "Tb"]) is None  # two classes fit: no guess
    assert match_class("Tb", ["tb", "Tb"]) == "Tb"  # an exact name always wins


@pytest.mark.parametrize(
    ("labels", "positive"),
    [
        (["abnormal", "normal"], "abnormal"),  # alphabetically first: index 0
        (["Normal", "tuberculosis"], "tuberculosis"),
        (["benign", "malignant"], "malignant"),
        (["0", "1"], "1"),
        (["disease", "Healthy"], "disease"),
        (["case", "control"], "case"),
        (["False", "True"], "True"),
        (["no", "yes"], "yes"),
        (["negative", "positive"], "positive"),
    ],
)
def test_the_default_positive_class_is_the_one_that_is_no_recognised_negative(labels, positive):
    assert positive_class(labels, "multiclass") == positive


def test_positive_class_is_required_when_the_names_do_not_say_and_checked_when_given():
    with pytest.raises(ConfigError) as info:
        positive_class(["cat", "dog"], "multiclass")
    assert str(info.value) == (
        "data.positive_class: which of the classes ['cat', 'dog'] is positive (the one sensitivity and "
        f"ROC are about)? Neither or both are a recognised negative ({', '.join(NEGATIVE_NAMES)}); "
        "set it, e.g. data.positive_class=dog"
    )
    with pytest.raises(ConfigError, match="Neither or both"):
        positive_class(["normal", "healthy"], "multiclass")
    assert positive_class(["cat", "dog"], "multiclass", "cat") == "cat"
    assert positive_class(["abnormal", "normal"], "multiclass", "normal") == "normal"  # explicit wins
    with pytest.raises(ConfigError, match=r"data.positive_class: 'abnormall' is not one of the classes "
                                          r"\['abnormal', 'normal'\]; did you mean 'abnormal'\?"):
        positive_class(["abnormal", "normal"], "multiclass", "abnormall")


def test_tasks_without_two_classes_have_no_positive_class():
    assert positive_class(["a", "b", "c"], "multiclass") is None
    assert positive_class(["effusion", "nodule"], "multilabel") is None
    with pytest.raises(ConfigError, match=r"data.positive_class: 'b' needs a task of two classes; this one "
                                          r"is multiclass with labels \['a', 'b', 'c'\]"):
        positive_class(["a", "b", "c"], "multiclass", "b")
