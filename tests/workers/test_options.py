import pytest

from workers import EmbedOptions, OptionError


@pytest.mark.parametrize("given", ["Left", "LEFT", "left"])
def test_truncation_direction_is_case_insensitive(given):
    assert EmbedOptions(truncation_direction=given).truncation_direction == "left"


def test_bad_direction_names_the_allowed_values():
    with pytest.raises(OptionError, match="'left' or 'right'"):
        EmbedOptions(truncation_direction="middle")


@pytest.mark.parametrize("field", ["normalize", "truncate"])
def test_flags_must_be_booleans(field):
    with pytest.raises(OptionError, match=field):
        EmbedOptions(**{field: "yes"})


def test_defaults_follow_the_feature_extraction_api():
    options = EmbedOptions()
    assert options.normalize and options.truncate
    assert options.truncation_direction == "right" and options.prompt_name is None
