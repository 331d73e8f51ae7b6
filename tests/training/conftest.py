import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run faster on one thread, and the shared CI machine is not oversubscribed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory):
    """A tiny SD pipeline folder (torchdiffusion's classes) for the text-to-image training tests."""
    pytest.importorskip("transformers")
    from tests.training.t2i_common import save_tiny_pipeline

    return save_tiny_pipeline(str(tmp_path_factory.mktemp("sd") / "tiny_sd"))


@pytest.fixture(scope="session")
def captions_dir(tmp_path_factory):
    """Six captioned 64 px images with a metadata.jsonl."""
    from tests.training.t2i_common import write_metadata_folder

    return write_metadata_folder(str(tmp_path_factory.mktemp("captions") / "data"))
