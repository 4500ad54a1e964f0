import pytest

from speechswarm.config import Config, ConfigError, dump_yaml, from_dict, load_config, to_dict


def test_defaults_and_overrides():
    cfg = load_config(None, ["optim.lr=3e-4", "model.rnn_layers=2", "data.speed_factors=[0.9,1.1]"])
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.model.rnn_layers == 2
    assert cfg.data.speed_factors == (0.9, 1.1)
    assert cfg.train.epochs == Config().train.epochs


def test_yaml_round_trip(tmp_path):
    cfg = load_config(
        None, ["model.conv_kernels=[[41,11],[21,11],[21,11]]", "augment.gain_db=[-6,6]"]
    )
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg))
    again = load_config(str(path))
    assert again == cfg
    assert again.model.conv_kernels == ((41, 11), (21, 11), (21, 11))
    assert again.augment.gain_db == (-6.0, 6.0)


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", "unknown key(s) in 'optim': lrr"),
        ("optim.lr=fast", "optim.lr: expected a number"),
        ("model.rnn_layers=2.5", "model.rnn_layers: expected an integer"),
        ("model.rnn_type=transformer", "model.rnn_type: 'transformer' is not one of"),
        ("train.bidirectional=yes", "unknown key(s) in 'train'"),
        ("model.bidirectional=maybe", "model.bidirectional: expected true or false"),
        ("augment.gain_db=[1,2,3]", "augment.gain_db"),
        ("nosection=1", "unknown key(s): nosection"),
        ("lr", "must look like section.key=value"),
    ],
)
def test_bad_keys_and_types_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)


def test_optional_tuple_accepts_null():
    cfg = load_config(None, ["augment.gain_db=[-3,3]", "augment.gain_db=null"])
    assert cfg.augment.gain_db is None


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="neither a YAML file nor a preset"):
        load_config("no-such-preset")


def test_to_dict_is_plain():
    d = to_dict(Config())
    assert isinstance(d["model"]["conv_kernels"][0], list)
    assert from_dict(Config, d) == Config()
