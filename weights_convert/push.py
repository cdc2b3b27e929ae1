"""`push_to_hub` of the three backends' models: `save_pretrained` into a temporary directory, then one Hub commit.

What transformers' `PushToHubMixin.push_to_hub` does (v5 for torch, the same in 4.x for TF and Flax): create the
repo if missing, the branch `revision` if missing, and commit the saved files. The upload itself is
`gpt2_core.tokenization_io.push_to_hub`, shared with the tokenizers (gpt2_core cannot import this package).

Deliberate difference: no model card (README.md) is written or tagged, so `tags=` is not taken.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpt2_core.tokenization_io import push_to_hub as _upload


def push_to_hub(
    model: Any,
    repo_id: str,
    *,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: bool | str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str | None = None,
) -> Any:
    """Upload `model.save_pretrained(...)`'s files (config.json, model.safetensors, generation_config.json) to the
    Hub repo `repo_id`.

    Args:
        model: A gpt2_torch, gpt2_tf or gpt2_flax model (anything with `save_pretrained(dir, max_shard_size=...)`).
        repo_id: `"name"` (the token's namespace) or `"org/name"`; created if missing.
        commit_message: Default `"Upload model"`, as transformers.
        commit_description: The commit's description.
        private: Make a new repo private (ignored when it exists).
        token: A Hub token; None or True: the stored login.
        revision: The branch to commit to (created if missing).
        create_pr: Open a pull request instead of committing to the branch.
        max_shard_size: Shard `model.safetensors` above this size (`save_pretrained`'s; None: its default).

    Returns:
        huggingface_hub's `CommitInfo`.
    """

    def save(directory: Path) -> None:
        model.save_pretrained(directory, max_shard_size=max_shard_size)

    return _upload(
        save,
        repo_id,
        default_message="Upload model",
        commit_message=commit_message,
        commit_description=commit_description,
        private=private,
        token=token,
        revision=revision,
        create_pr=create_pr,
    )
