"""Model card validation: good cards round-trip; each bad field is named, with the file, in one message."""

from __future__ import annotations

import pytest

from cxrbench.errors import CxrbenchError, DataError
from cxrbench.publish.card import card_from_dict, load_card, slugify

GOOD = """\
name = "DDPM 64 (v2)"
authors = ["A. Author", "B. Author"]
url = "https://github.com/example/ddpm-cxr"
paper = "https://arxiv.org/abs/2006.11239"
training_data = "NIH ChestX-ray14, train split"
resolution = 64
conditioning = "unconditional"
license = "Apache-2.0"
"""


def write(tmp_path, text, name="model.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_good_card_round_trips(tmp_path):
    card = load_card(write(tmp_path, GOOD))
    assert card.name == "DDPM 64 (v2)" and card.slug == "ddpm-64-v2"
    assert card.resolution == (64, 64) and card.authors == ("A. Author", "B. Author")
    assert card_from_dict(card.to_dict()) == card  # the entry stores to_dict(); it must validate back


def test_optional_links_may_be_absent(tmp_path):
    text = "\n".join(line for line in GOOD.splitlines() if not line.startswith(("url", "paper")))
    card = load_card(write(tmp_path, text))
    assert card.url is None and card.paper is None
    assert "url" not in card.to_dict() and card_from_dict(card.to_dict()) == card


@pytest.mark.parametrize(
    "edit, field",
    [
        (("resolution = 64", "resolution = -3"), "resolution"),
        (("resolution = 64", "resolution = [64]"), "resolution"),
        (("resolution = 64", 'resolution = "64"'), "resolution"),
        (('conditioning = "unconditional"', 'conditioning = "vibes"'), "conditioning"),
        (('authors = ["A. Author", "B. Author"]', 'authors = "A. Author"'), "authors"),
        (('authors = ["A. Author", "B. Author"]', "authors = []"), "authors"),
        (('url = "https://github.com/example/ddpm-cxr"', 'url = "javascript:alert(1)"'), "url"),
        (('paper = "https://arxiv.org/abs/2006.11239"', 'paper = "arXiv 2006.11239"'), "paper"),
        (('name = "DDPM 64 (v2)"', 'name = "../../etc/passwd"'), "name"),
        (('name = "DDPM 64 (v2)"', 'name = "<script>x</script>"'), "name"),
        (('license = "Apache-2.0"', 'license = ""'), "license"),
        (('license = "Apache-2.0"', "license = 3"), "license"),
    ],
)
def test_bad_field_is_named_with_the_file(tmp_path, edit, field):
    old, new = edit
    assert old in GOOD
    p = write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(DataError) as e:
        load_card(p)
    msg = str(e.value)
    assert str(p) in msg and repr(field) in msg and "\n" not in msg


def test_missing_and_unknown_fields(tmp_path):
    p = write(tmp_path, GOOD.replace('license = "Apache-2.0"\n', ""))
    with pytest.raises(DataError, match=r"missing required field\(s\) \['license'\]") as e:
        load_card(p)
    assert str(p) in str(e.value)
    p = write(tmp_path, GOOD + 'licence = "MIT"\n', "typo.toml")
    with pytest.raises(DataError, match=r"unknown field\(s\) \['licence'\]"):
        load_card(p)


def test_unreadable_cards_are_user_errors(tmp_path):
    with pytest.raises(CxrbenchError, match="no such model card"):
        load_card(tmp_path / "absent.toml")
    with pytest.raises(CxrbenchError, match="not valid TOML"):
        load_card(write(tmp_path, "name = "))
    with pytest.raises(CxrbenchError, match="is a folder"):
        load_card(tmp_path)


def test_slug_is_file_and_anchor_safe():
    for name in ["DDPM 64 (v2)", "A+B", "x.y_z", "a..b", "Model--1", "(x)"]:
        s = slugify(name)
        assert s and "/" not in s and ".." not in s and s == s.lower() and not s.startswith(("-", "."))
