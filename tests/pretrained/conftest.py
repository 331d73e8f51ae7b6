import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A folder written by the embedded model's recipe at tiny scale, and the summary it returned."""
    pytest.importorskip("transformers")
    pytest.importorskip("sklearn")
    from torchdiffusion.pretrained import recipe

    out = tmp_path_factory.mktemp("embedded") / "model"
    summary = recipe.pretrain_embedded(out, minutes=None, tiny=True, log=None)
    return out, summary
