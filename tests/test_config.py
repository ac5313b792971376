import pytest

from edgeseg.runtime.errors import ConfigError
from edgeseg.training.config import DEFAULTS, dump_config, parse_override, resolve_config


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_precedence_defaults_then_yaml_then_overrides(tmp_path):
    path = write(tmp_path, "optim:\n  lr: 0.05\ntrain:\n  iterations: 7\n")
    config = resolve_config(path, ["train.iterations=9", "data.crop_size=[64, 96]"])
    assert config["optim"]["lr"] == 0.05            # from YAML
    assert config["train"]["iterations"] == 9       # override wins over YAML
    assert config["data"]["crop_size"] == [64, 96]  # parsed as YAML list
    assert config["optim"]["momentum"] == DEFAULTS["optim"]["momentum"]  # untouched default


def test_unknown_key_suggests_close_match(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'iterations'"):
        resolve_config(None, ["train.iteratons=5"])
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'"):
        resolve_config(write(tmp_path, "optim:\n  lrr: 1\n"))


def test_type_must_match_default():
    with pytest.raises(ConfigError, match="train.iterations must be int"):
        resolve_config(None, ["train.iterations=many"])
    with pytest.raises(ConfigError, match="must be true or false"):
        resolve_config(None, ["data.flip=1"])
    assert resolve_config(None, ["optim.lr=1"])["optim"]["lr"] == 1.0  # int accepted for float, stored as float


def test_yaml_1_1_spellings_and_size_forms(tmp_path):
    config = resolve_config(write(tmp_path, "train:\n  amp: off\n  channels_last: false\noptim:\n  lr: 1e-3\n"),
                            ["data.base_size=360x480", "data.crop_size=[128, 160]"])
    assert config["train"]["amp"] == "off"             # YAML reads off as False; the setting is a string
    assert config["train"]["channels_last"] is False   # this one really takes a boolean
    assert config["optim"]["lr"] == 0.001              # YAML reads 1e-3 (no dot) as a string
    assert config["data"]["base_size"] == [360, 480] and config["data"]["crop_size"] == [128, 160]
    # One size rule for flags, configs and the Segmenter (runtime/sizes.py): a single number is a square.
    assert resolve_config(None, ["data.base_size=512"])["data"]["base_size"] == [512, 512]
    for bad in ("data.eval_size=[0, 4]", "data.crop_size=360x", "data.crop_size=[1]"):
        with pytest.raises(ConfigError, match=r"must be HEIGHTxWIDTH"):
            resolve_config(None, [bad])


def test_free_form_sections_and_none_defaults(tmp_path):
    config = resolve_config(write(tmp_path, "model:\n  kwargs: {output_stride: 16}\ndistill:\n  teacher: t.pt\n"),
                            ["data.base_size=[180, 240]"])
    assert config["model"]["kwargs"] == {"output_stride": 16}
    assert config["distill"] == {"teacher": "t.pt"}
    assert config["data"]["base_size"] == [180, 240]


def test_override_inside_a_free_form_section_keeps_its_other_keys(tmp_path):
    path = write(tmp_path, "model:\n  kwargs: {output_stride: 16, aux: true}\n"
                           "distill:\n  teacher: t.pt\n  losses: [{name: kd, weight: 1.0}]\n")
    config = resolve_config(path, ["distill.teacher=other.pt", "model.kwargs.output_stride=8"])
    assert config["distill"] == {"teacher": "other.pt", "losses": [{"name": "kd", "weight": 1.0}]}
    assert config["model"]["kwargs"] == {"output_stride": 8, "aux": True}
    # A list is a value, not a section: an override replaces it whole.
    assert resolve_config(path, ["distill.losses=[]"])["distill"]["losses"] == []


def test_bad_override_syntax_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("train.iterations")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve_config(write(tmp_path, "train: [unclosed\n"))
    with pytest.raises(ConfigError, match="mapping at the top level"):
        resolve_config(write(tmp_path, "- a\n- b\n"))


def test_resolved_config_round_trips_through_yaml(tmp_path):
    config = resolve_config(None, ["name=x", "train.seed=3"])
    assert resolve_config(write(tmp_path, dump_config(config))) == config


@pytest.mark.parametrize("value, expected", [("360x480", (360, 480)), (" 64 X 96 ", (64, 96)), ("512", (512, 512)),
                                             ("3*4", (3, 4)), ([360, 480], (360, 480))])
def test_one_size_rule_for_flags_configs_and_the_segmenter(value, expected):
    from edgeseg.runtime.arguments import size_argument
    from edgeseg.runtime.sizes import parse_size

    assert parse_size(value) == expected
    assert tuple(resolve_config(None, [f"data.crop_size={value if isinstance(value, str) else list(value)}"])
                 ["data"]["crop_size"]) == expected
    if isinstance(value, str):
        assert size_argument(value) == expected


@pytest.mark.parametrize("value", ["64x", "0x96", "axb", "1x2x3", [True, 2], [1], "", "-3x4"])
def test_bad_sizes_name_the_setting(value):
    from edgeseg.runtime.sizes import parse_size

    with pytest.raises(ConfigError, match=r"data.crop_size must be HEIGHTxWIDTH"):
        parse_size(value, "data.crop_size")
