"""One parser for ``--set key.sub=value`` overrides (experiments, the Frozen demo, ``mmfm run``)."""
import pytest

from mmfm.util.overrides import apply_overrides, parse_override, set_path


def test_values_are_yaml():
    assert parse_override("train.epochs=2") == ("train.epochs", 2)
    assert parse_override("a=[1, 2]") == ("a", [1, 2])
    assert parse_override("a=null") == ("a", None)
    assert parse_override("name=x=y") == ("name", "x=y")     # only the first '=' splits


def test_nested_keys_create_sections_and_index_lists():
    raw = {"models": [{"train": {"lr": 1.0}}]}
    apply_overrides(raw, ["models.0.train.lr=0.5", "seed=3", "data.train.args.size=8"])
    assert raw == {"models": [{"train": {"lr": 0.5}}], "seed": 3, "data": {"train": {"args": {"size": 8}}}}


def test_an_empty_yaml_section_takes_keys():
    raw = {"frozen": None}                      # `frozen:` with nothing under it
    apply_overrides(raw, ["frozen.steps=4"])
    assert raw == {"frozen": {"steps": 4}}


@pytest.mark.parametrize("bad, says", [("epochs", "is not KEY=VALUE"), ("=3", "is not KEY=VALUE"),
                                       ("a=[1, 2", "not valid YAML")])
def test_bad_assignments_name_themselves(bad, says):
    with pytest.raises(ValueError, match=says) as e:
        parse_override(bad)
    assert repr(bad) in str(e.value)


def test_bad_paths_name_the_key_and_leave_the_dict_alone():
    raw = {"models": [{"x": 1}], "seed": 3}
    with pytest.raises(ValueError, match="models.5.x"):
        set_path(raw, "models.5.x", 1)
    with pytest.raises(ValueError, match="seed.a"):
        set_path(raw, "seed.a", 1)
    assert raw == {"models": [{"x": 1}], "seed": 3}
