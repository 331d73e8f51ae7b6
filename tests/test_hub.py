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


# ---- links out of the model folder ------------------------------------------------------------------------------


def test_symlink_out_of_the_model_folder_is_refused(tmp_path):
    """A weights or config file that is a link to a file outside the model folder is refused, naming the file."""
    import os
    import shutil

    TinyModel(width=3).save_pretrained(tmp_path / "model")
    weights = tmp_path / "model" / "diffusion_pytorch_model.safetensors"
    shutil.move(weights, tmp_path / "secret.safetensors")
    os.symlink(tmp_path / "secret.safetensors", weights)
    with pytest.raises(ValueError, match="diffusion_pytorch_model.safetensors"):
        TinyModel.from_pretrained(tmp_path / "model")
    # the same through a relative link, and for the config
    weights.unlink()
    os.symlink(os.path.join("..", "secret.safetensors"), weights)
    with pytest.raises(ValueError, match="outside"):
        TinyModel.from_pretrained(tmp_path / "model")
    weights.unlink()
    shutil.move(tmp_path / "secret.safetensors", weights)
    config = tmp_path / "model" / "config.json"
    shutil.move(config, tmp_path / "config.json")
    os.symlink(tmp_path / "config.json", config)
    with pytest.raises(ValueError, match="config.json"):
        TinyModel.from_pretrained(tmp_path / "model")
    # a link that stays inside the folder is fine, and so is a model folder that is itself a link
    config.unlink()
    shutil.move(tmp_path / "config.json", tmp_path / "model" / "real_config.json")
    os.symlink("real_config.json", config)
    assert TinyModel.from_pretrained(tmp_path / "model").config.width == 3
    os.symlink(tmp_path / "model", tmp_path / "alias")
    assert TinyModel.from_pretrained(tmp_path / "alias").config.width == 3


def test_hugging_face_cache_snapshot_links_still_load(tmp_path, monkeypatch):
    """The Hub cache links every snapshot file to the repo's blobs/ folder: a snapshot folder passed as a local path,
    or the repo id offline, still loads."""
    import os
    import shutil

    TinyModel(width=3).save_pretrained(tmp_path / "src")
    repo = tmp_path / "cache" / "models--someone--tiny"
    snapshot = repo / "snapshots" / ("0" * 40)
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for name in os.listdir(tmp_path / "src"):
        shutil.copy(tmp_path / "src" / name, repo / "blobs" / name)
        os.symlink(os.path.join("..", "..", "blobs", name), snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    assert TinyModel.from_pretrained(snapshot).config.width == 3
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert TinyModel.from_pretrained("someone/tiny", cache_dir=str(tmp_path / "cache")).config.width == 3


def test_pipeline_component_folder_linked_out_is_refused(tmp_path):
    import os
    import shutil

    from tests.training.common import tiny_scheduler, tiny_unet
    from torchdiffusion import DDPMPipeline, DiffusionPipeline

    DDPMPipeline(unet=tiny_unet(), scheduler=tiny_scheduler()).save_pretrained(tmp_path / "pipe")
    shutil.move(tmp_path / "pipe" / "unet", tmp_path / "unet_elsewhere")
    os.symlink(tmp_path / "unet_elsewhere", tmp_path / "pipe" / "unet")
    with pytest.raises(ValueError, match="outside the model folder"):
        DiffusionPipeline.from_pretrained(tmp_path / "pipe")
