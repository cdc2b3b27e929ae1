"""`push_to_hub` of the models (every backend) and of both tokenizers, against a local fake of the Hub: the
`huggingface_hub.HfApi` methods it calls are replaced by ones that record their arguments and copy the uploaded
folder into a directory per repo and branch. Never the network.

Oracles: transformers v5 loads what was uploaded and gives the model's logits (the backend's own forward on the same
weights) and the tokenizer's ids; the calls carry transformers' defaults ("Upload model", "Upload tokenizer") and
the arguments given.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import TOL, make_config
from gpt2_core import reference
from gpt2_core.tokenization import GPT2Tokenizer, GPT2TokenizerFast


class FakeHub:
    """The HfApi methods push_to_hub uses, recording each call; uploads land in `root/<repo_id>/<branch>`."""

    def __init__(self, root: Path, namespace: str = "me") -> None:
        self.root, self.namespace, self.calls = root, namespace, []

    def install(self, monkeypatch) -> "FakeHub":
        import huggingface_hub

        hub = self

        def create_repo(self, repo_id, *, token=None, private=None, exist_ok=False, **kwargs):
            hub.calls.append(("create_repo", repo_id, dict(token=token, private=private, exist_ok=exist_ok, **kwargs)))
            full = repo_id if "/" in repo_id else f"{hub.namespace}/{repo_id}"
            return SimpleNamespace(repo_id=full, url=f"https://huggingface.co/{full}")

        def create_branch(self, repo_id, *, branch, token=None, exist_ok=False, **kwargs):
            hub.calls.append(("create_branch", repo_id, dict(branch=branch, token=token, exist_ok=exist_ok, **kwargs)))

        def upload_folder(self, *, repo_id, folder_path, **kwargs):
            hub.calls.append(("upload_folder", repo_id, dict(kwargs)))
            target = hub.root / repo_id / (kwargs.get("revision") or "main")
            shutil.copytree(folder_path, target, dirs_exist_ok=True)
            return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0", oid="0" * 40, pr_url=None)

        def refuse(self, *args, **kwargs):
            raise AssertionError(f"push_to_hub called an HfApi method the fake does not know: {args} {kwargs}")

        for name in ("create_commit", "upload_file", "whoami", "repo_info"):
            monkeypatch.setattr(huggingface_hub.HfApi, name, refuse)
        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
        monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", create_branch)
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
        return self

    def uploaded(self, repo_id: str, branch: str = "main") -> Path:
        return self.root / repo_id / branch


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # anything that slips past the fake fails instead of going out
    return FakeHub(tmp_path / "remote").install(monkeypatch)


def test_model_push_uploads_what_transformers_loads(backend, hub):
    import torch
    import transformers

    config = make_config()
    model = backend.build("lm", config, reference.random_params(config, "lm", seed=5))
    info = model.push_to_hub("tiny-gpt2", private=True, token="hf_x")

    assert info.oid == "0" * 40
    assert [c[0] for c in hub.calls] == ["create_repo", "upload_folder"]
    assert hub.calls[0][1:] == ("tiny-gpt2", dict(token="hf_x", private=True, exist_ok=True))
    _, repo_id, upload = hub.calls[1]
    assert repo_id == "me/tiny-gpt2"  # the namespace create_repo answered, as transformers
    assert upload == dict(commit_message="Upload model", commit_description=None, token="hf_x", revision=None,
                          create_pr=False)

    folder = hub.uploaded("me/tiny-gpt2")
    assert {"config.json", "model.safetensors"} <= {p.name for p in folder.iterdir()}
    ids = np.array([[5, 17, 3, 90, 41]])
    theirs = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = theirs(torch.tensor(ids)).logits.numpy()
    got = np.asarray(backend.forward(model, "lm", input_ids=ids)["logits"])
    assert np.max(np.abs(got - expected)) <= TOL


def test_model_push_to_a_branch_with_a_message_and_shards(hub):
    from gpt2_torch import GPT2LMHeadModel

    model = GPT2LMHeadModel(make_config())
    model.push_to_hub(
        "org/tiny", commit_message="first", commit_description="why", revision="dev", create_pr=True,
        max_shard_size="20KB",
    )
    assert hub.calls[1] == ("create_branch", "org/tiny", dict(branch="dev", token=None, exist_ok=True))
    assert hub.calls[2][2] == dict(commit_message="first", commit_description="why", token=None, revision="dev",
                                   create_pr=True)
    names = {p.name for p in hub.uploaded("org/tiny", "dev").iterdir()}
    assert "model.safetensors.index.json" in names  # save_pretrained's sharding reached the upload
    reloaded = GPT2LMHeadModel.from_pretrained(hub.uploaded("org/tiny", "dev"))
    for (k, a), b in zip(model.state_dict().items(), reloaded.state_dict().values()):
        assert (a == b).all(), k


@pytest.mark.parametrize("cls", [GPT2Tokenizer, GPT2TokenizerFast], ids=["python", "fast"])
def test_tokenizer_push_uploads_what_transformers_loads(cls, hub):
    import transformers

    tok = cls(pad_token="[PAD]", padding_side="left")
    tok.add_tokens(["<|user|>"])
    tok.push_to_hub("org/tok", token="hf_y", revision="v1")
    assert [c[0] for c in hub.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert hub.calls[2][2]["commit_message"] == "Upload tokenizer" and hub.calls[2][2]["revision"] == "v1"

    theirs = transformers.GPT2TokenizerFast.from_pretrained(hub.uploaded("org/tok", "v1"))
    text = ["Hello <|user|> world", "a"]
    assert tok(text, padding=True)["input_ids"] == theirs(text, padding=True)["input_ids"]
    assert theirs.padding_side == "left" and theirs.pad_token == "[PAD]"


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    """GPT-2's tokenizer, read from its vocabulary files once (~1 s) for the cases that only call push_to_hub."""
    return GPT2Tokenizer()


@pytest.mark.parametrize("repo_id", ["", None, "/"])
def test_bad_repo_id_is_refused_before_any_call(hub, repo_id, gpt2_tokenizer):
    with pytest.raises(ValueError, match="repo_id"):
        gpt2_tokenizer.push_to_hub(repo_id)
    assert hub.calls == []
