"""push_to_hub / save_pretrained(push_to_hub=True) without the network: huggingface_hub.HfApi is replaced by a
recorder that keeps a copy of every uploaded folder."""

import os
import shutil

import pytest
import torch

from tests.helpers import TinyModel
from torchdiffusion import DDPMPipeline, DDPMScheduler, UNet2DModel
from torchdiffusion.hub import check_repo_id


class FakeApi:
    """Records create_repo / file_exists / upload_folder calls; uploads are copied into ``store``."""

    remote_has_readme = False
    calls: list = []

    def __init__(self, *args, **kwargs):
        self.init_kwargs = kwargs

    def create_repo(self, repo_id, *, token=None, private=None, exist_ok=False, **kwargs):
        FakeApi.calls.append(("create_repo", repo_id, {"token": token, "private": private, "exist_ok": exist_ok}))

        class Url:
            pass

        url = Url()
        url.repo_id = repo_id if "/" in repo_id else f"me/{repo_id}"
        return url

    def file_exists(self, repo_id, filename, *, token=None, **kwargs):
        FakeApi.calls.append(("file_exists", repo_id, {"filename": filename, "token": token}))
        return FakeApi.remote_has_readme

    def upload_folder(
        self, *, repo_id, folder_path, path_in_repo=None, commit_message=None, token=None, create_pr=None, **kwargs
    ):
        copy = os.path.join(FakeApi.store, f"upload{len(FakeApi.calls)}")
        shutil.copytree(folder_path, copy)
        files = sorted(
            os.path.relpath(os.path.join(root, f), copy).replace(os.sep, "/")
            for root, _, names in os.walk(copy)
            for f in names
        )
        FakeApi.calls.append(
            (
                "upload_folder",
                repo_id,
                {
                    "path_in_repo": path_in_repo,
                    "commit_message": commit_message,
                    "token": token,
                    "create_pr": create_pr,
                    "files": files,
                    "copy": copy,
                },
            )
        )
        return f"https://huggingface.co/{repo_id}/commit/0123"


@pytest.fixture
def api(monkeypatch, tmp_path):
    import huggingface_hub

    FakeApi.calls = []
    FakeApi.remote_has_readme = False
    FakeApi.store = str(tmp_path / "remote")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return FakeApi


def _uploads(api):
    return [c for c in api.calls if c[0] == "upload_folder"]


def _tiny_unet():
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()


def test_model_push_to_hub_uploads_weights_config_and_card(api):
    model = TinyModel(width=3)
    out = model.push_to_hub("me/tiny", token="hf_secret", private=True)
    assert out.endswith("/commit/0123")
    create = [c for c in api.calls if c[0] == "create_repo"]
    assert create == [("create_repo", "me/tiny", {"token": "hf_secret", "private": True, "exist_ok": True})]
    (upload,) = _uploads(api)
    _, repo_id, info = upload
    assert repo_id == "me/tiny" and info["token"] == "hf_secret" and info["path_in_repo"] is None
    assert info["commit_message"] == "Upload model" and not info["create_pr"]
    assert info["files"] == ["README.md", "config.json", "diffusion_pytorch_model.safetensors"]
    card = open(os.path.join(info["copy"], "README.md"), encoding="utf-8").read()
    assert card.startswith("---\nlibrary_name: diffusers\n") and "tiny" in card
    again = TinyModel.from_pretrained(info["copy"])
    assert again.config.width == 3
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_push_options_reach_the_upload(api):
    TinyModel().push_to_hub("me/tiny", commit_message="first", create_pr=True, safe_serialization=False, variant="fp16")
    (upload,) = _uploads(api)
    info = upload[2]
    assert info["commit_message"] == "first" and info["create_pr"] is True
    assert "diffusion_pytorch_model.fp16.bin" in info["files"]


def test_existing_remote_card_is_kept_and_subfolder_gets_none(api):
    api.remote_has_readme = True
    TinyModel().push_to_hub("me/tiny")
    assert "README.md" not in _uploads(api)[-1][2]["files"]
    api.remote_has_readme = False
    TinyModel().push_to_hub("me/tiny", subfolder="unet")
    info = _uploads(api)[-1][2]
    assert info["path_in_repo"] == "unet" and "README.md" not in info["files"]


def test_scheduler_push_to_hub(api):
    DDPMScheduler(num_train_timesteps=30).push_to_hub("sched")
    (upload,) = _uploads(api)
    assert upload[1] == "me/sched"  # the id create_repo returns (namespace filled in) is the one uploaded to
    assert upload[2]["commit_message"] == "Upload scheduler"
    assert upload[2]["files"] == ["README.md", "scheduler_config.json"]
    assert DDPMScheduler.from_pretrained(upload[2]["copy"]).config.num_train_timesteps == 30


def test_pipeline_push_to_hub_round_trips(api):
    pipe = DDPMPipeline(unet=_tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=20))
    pipe.push_to_hub("me/ddpm-tiny", token="tok")
    (upload,) = _uploads(api)
    info = upload[2]
    assert info["commit_message"] == "Upload DDPMPipeline" and info["token"] == "tok"
    assert {"model_index.json", "README.md", "scheduler/scheduler_config.json", "unet/config.json"} <= set(
        info["files"]
    )
    assert "pipeline" in open(os.path.join(info["copy"], "README.md"), encoding="utf-8").read()
    loaded = DDPMPipeline.from_pretrained(info["copy"])
    gen = torch.Generator().manual_seed(0)
    a = pipe(batch_size=1, num_inference_steps=3, generator=gen, output_type="np").images
    gen = torch.Generator().manual_seed(0)
    b = loaded(batch_size=1, num_inference_steps=3, generator=gen, output_type="np").images
    assert (a == b).all()


def test_save_pretrained_push_to_hub(api, tmp_path):
    pipe = DDPMPipeline(unet=_tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=20))
    target = tmp_path / "my-ddpm"
    pipe.save_pretrained(target, push_to_hub=True, private=False, commit_message="trained")
    (upload,) = _uploads(api)
    assert upload[1] == "me/my-ddpm"  # repo_id defaults to the folder's name
    assert upload[2]["commit_message"] == "trained"
    assert (target / "README.md").is_file() and (target / "unet" / "config.json").is_file()
    assert [c for c in api.calls if c[0] == "create_repo"][0][2]["private"] is False

    model_dir = tmp_path / "m"
    TinyModel().save_pretrained(model_dir, push_to_hub=True, repo_id="org/other", token="t")
    upload = _uploads(api)[-1]
    assert upload[1] == "org/other" and upload[2]["token"] == "t" and "config.json" in upload[2]["files"]

    DDPMScheduler().save_pretrained(tmp_path / "s", push_to_hub=True, repo_id="org/s", subfolder="scheduler")
    upload = _uploads(api)[-1]
    assert upload[2]["path_in_repo"] == "scheduler" and upload[2]["files"] == ["scheduler_config.json"]


def test_no_upload_without_push_to_hub(api, tmp_path):
    TinyModel().save_pretrained(tmp_path / "m", repo_id="me/x")  # hub options are ignored, as in Diffusers
    assert api.calls == [] and not (tmp_path / "m" / "README.md").exists()
    TinyModel().save_pretrained(tmp_path / "m2", push_to_hub=True, is_main_process=False, repo_id="me/x")
    assert api.calls == []


@pytest.mark.parametrize("repo_id", ["", "   ", None, 3, "a/b/c", "../x", "me/bad name"])
def test_bad_repo_id(api, repo_id):
    with pytest.raises(ValueError, match="repo_id"):
        TinyModel().push_to_hub(repo_id)
    assert api.calls == []


def test_bad_repo_id_in_save_pretrained(api, tmp_path):
    with pytest.raises(ValueError, match="repo_id"):
        DDPMScheduler().save_pretrained(tmp_path / "s", push_to_hub=True, repo_id="")
    assert check_repo_id("me/ok-name_1.0") == "me/ok-name_1.0"


def test_bad_subfolder(api):
    with pytest.raises(ValueError, match="subfolder"):
        TinyModel().push_to_hub("me/x", subfolder="../up")


def test_bad_safe_serialization(api):
    with pytest.raises(TypeError, match="safe_serialization"):
        TinyModel().push_to_hub("me/x", safe_serialization="yes")
    assert api.calls == []


def test_push_to_hub_takes_a_save_callable(api):
    from torchdiffusion.hub import push_to_hub

    def save(folder):
        with open(os.path.join(folder, "notes.txt"), "w") as f:
            f.write("hi")

    push_to_hub(save, "me/notes", commit_message="notes")
    upload = [c for c in FakeApi.calls if c[0] == "upload_folder"][-1]
    assert upload[2]["files"] == ["README.md", "notes.txt"] and upload[2]["commit_message"] == "notes"
    with pytest.raises(TypeError, match="save"):
        push_to_hub("not callable", "me/notes")
