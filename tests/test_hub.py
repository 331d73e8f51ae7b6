import pytest

from tests.helpers import TinyModel
from torchdiffusion.hub import check_plain_name, check_subfolder, resolve_file, try_resolve_file


@pytest.mark.parametrize("name", ["../x", "a/b", "/etc/passwd", "..", ".", "", "a\\b", "x/../../y", None, 3])
def test_plain_names_reject_paths(name):
    with pytest.raises(ValueError, match="shard"):
        check_plain_name(name, "shard file")


def test_subfolder_rules():
    assert check_subfolder("unet") == "unet" and check_subfolder("a/b") == "a/b" and check_subfolder(None) is None
    with pytest.raises(ValueError, match="subfolder"):
        check_subfolder("../unet")
    with pytest.raises(TypeError, match="subfolder"):
        check_subfolder(3)


def test_local_resolution(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text("{}")
    assert resolve_file(tmp_path, "config.json", subfolder="unet").endswith("config.json")
    assert try_resolve_file(tmp_path, "nope.json") is None
    with pytest.raises(FileNotFoundError, match="nope.json"):
        resolve_file(tmp_path, "nope.json")


def test_bad_path_argument(tmp_path):
    with pytest.raises(TypeError, match="pretrained_model_name_or_path"):
        resolve_file(123, "config.json")
    with pytest.raises(FileNotFoundError, match="pretrained_model_name_or_path"):
        resolve_file(str(tmp_path / "does" / "not" / "exist"), "config.json")


def test_offline_hub_id_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises((FileNotFoundError, OSError), match="config.json"):
        TinyModel.from_pretrained("someone/not-cached-model")


def test_shard_index_naming_outside_folder_is_refused(tmp_path):
    import json

    m = TinyModel()
    m.save_pretrained(tmp_path / "model", max_shard_size=200)
    index_path = tmp_path / "model" / "diffusion_pytorch_model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    key = next(iter(index["weight_map"]))
    index["weight_map"][key] = "../secret.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match="plain name"):
        TinyModel.from_pretrained(tmp_path / "model")
