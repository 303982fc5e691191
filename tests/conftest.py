import pytest
import torch

from rlbook.lm import tiny_lm
from rlbook.tasks import SentimentWorld


@pytest.fixture(autouse=True)
def _one_thread_and_seed():
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def sentiment():
    world = SentimentWorld()
    tokenizer = world.tokenizer()
    # an untrained model is enough for plumbing tests: small and fast
    model = tiny_lm(tokenizer, d_model=32, n_layer=1, n_head=2, n_positions=16, seed=0).eval()
    return world, tokenizer, model


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RLBOOK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def trained_sentiment(sentiment):
    """A small model after a short SFT: grammatical often enough for rewards to differ."""
    from rlbook.lm import frozen_copy
    from rlbook.train import sft

    world, tokenizer, model = sentiment
    model = frozen_copy(model)
    for p in model.parameters():
        p.requires_grad_(True)
    torch.manual_seed(0)
    sft(model, tokenizer, world.sft_examples(2000), steps=150, batch_size=32, lr=1e-2, progress=False)
    return world, tokenizer, model.eval()


EXPERIMENTS = __import__("pathlib").Path(__file__).resolve().parents[1] / "experiments"


def load_experiment(name):
    """Import experiments/<name>.py (a script folder, not a package) as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def experiment():
    """The loader `load_experiment`, for tests that need a script's functions."""
    return load_experiment


@pytest.fixture
def quick_experiment(isolated_cache, tmp_path):
    """Run an experiment's --quick mode into a temporary JSON; return (module, results)."""
    import json

    def run(name):
        module = load_experiment(name)
        module.main(["--quick", "--out", str(tmp_path / "out.json")])
        return module, json.loads((tmp_path / "out.json").read_text())

    return run
