import json

import pytest

from tests.helpers import TinyModel
from torchdiffusion.configuration import ConfigMixin, FrozenDict, register_to_config
from torchdiffusion.utils.json_files import read_json


class Sched(ConfigMixin):
    config_name = "scheduler_config.json"

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, clip: bool = True):
        self.n = num_train_timesteps


class OtherSched(ConfigMixin):
    config_name = "scheduler_config.json"

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, order: int = 2):
        pass


def test_register_records_positional_keyword_and_defaults():
    s = Sched(10, clip=False)
    assert s.config.num_train_timesteps == 10
    assert s.config["clip"] is False
    assert s.config.beta_start == 0.0001
    assert s.config._use_default_values == ["beta_start"]
    assert s.num_train_timesteps == 10  # config keys readable as attributes


def test_frozen_dict_is_read_only():
    s = Sched()
    with pytest.raises(TypeError):
        s.config["clip"] = False
    with pytest.raises(TypeError):
        s.config.clip = False
    with pytest.raises(AttributeError, match="nope"):
        s.config.nope  # noqa: B018
    assert isinstance(s.config, FrozenDict)


def test_json_round_trip(tmp_path):
    s = Sched(num_train_timesteps=500)
    s.save_config(tmp_path)
    data = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert data["_class_name"] == "Sched" and "_diffusers_version" in data
    assert "_use_default_values" not in data
    loaded = Sched.from_config(Sched.load_config(tmp_path))
    assert loaded.config.num_train_timesteps == 500


def test_from_config_keeps_unknown_keys_hidden_and_round_trips():
    a = Sched(num_train_timesteps=77, beta_start=0.5, clip=False)
    b = OtherSched.from_config(a.config, order=3)
    assert b.config.num_train_timesteps == 77 and b.config.order == 3
    assert b.config.beta_start == 0.5 and b.config.clip is False  # hidden, kept
    c = Sched.from_config(b.config)
    assert c.config.beta_start == 0.5 and c.config.clip is False and c.config.num_train_timesteps == 77


def test_from_config_missing_keys_default_and_overrides_win():
    s = Sched.from_config({"num_train_timesteps": 5}, clip=False)
    assert s.config.beta_start == 0.0001 and s.config.clip is False and s.n == 5


def test_from_config_rejects_bad_config():
    with pytest.raises(ValueError, match="config"):
        Sched.from_config(None)
    with pytest.raises(TypeError, match="config"):
        Sched.from_config([1, 2])


def test_read_json_errors_name_the_file(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        read_json(bad)
    bad.write_text("[1]")
    with pytest.raises(ValueError, match="config.json"):
        read_json(bad)


def test_save_config_refuses_file(tmp_path):
    f = tmp_path / "x"
    f.write_text("")
    with pytest.raises(ValueError, match="save_directory"):
        Sched().save_config(f)


def test_model_config_attribute_access():
    m = TinyModel(width=3)
    assert m.width == 3 and m.config.depth == 2
    with pytest.raises(AttributeError):
        m.not_a_thing  # noqa: B018
